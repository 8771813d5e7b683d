"""Transitional: the stop SQL moved to adapters/postgres/stops.py (`ExecutionStore.stop_reason`
is the port). Kept only until core/children_sweep.py imports it from there; then delete."""

from twintrack.adapters.postgres.stops import stop_command_exists

__all__ = ["stop_command_exists"]
