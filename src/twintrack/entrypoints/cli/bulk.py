"""What the bulk CLI verbs share: `--filter KEY=VALUE` parsing and the report they print.

`twintrack executions stop --filter ...` and `twintrack rollout reroute --filter ...` both act
through core/bulk.py: a dry run unless `--yes`, then one operation under `--operation-id`
(printed, so the same command line with it is safe to run again: it acts on nothing twice and
prints the recorded result).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from twintrack.entrypoints.cli.support import fail

if TYPE_CHECKING:
    from twintrack.core.bulk import BulkResult, ExecutionFilter

FILTER_HELP = (
    "KEY=VALUE, repeatable (all must match): track=kafka|dbos, status=queued[,created...], "
    "flow=FLOW_ID, owner=OWNER, created-before=ISO-8601, created-after=ISO-8601."
)
_KEYS = ("track", "status", "flow", "owner", "created-before", "created-after")
_SHOWN = 20


def _when(key: str, value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"--filter {key}: not an ISO-8601 time: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_filter(items: Sequence[str]) -> ExecutionFilter:
    """`--filter` options into an ExecutionFilter; exit 2 naming a bad one."""
    from twintrack.core.bulk import ExecutionFilter
    from twintrack.domain.execution import ExecutionStatus, Track

    fields: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip().lower().replace("_", "-"), value.strip()
        if not sep or not value:
            raise fail(f"--filter {item!r}: expected KEY=VALUE ({', '.join(_KEYS)})")
        try:
            if key == "track":
                fields["track"] = Track(value.lower())
            elif key == "status":
                fields["statuses"] = tuple(
                    ExecutionStatus(s.strip().lower()) for s in value.split(",") if s.strip()
                )
            elif key == "flow":
                fields["flow_id"] = value
            elif key == "owner":
                fields["owner_id"] = value
            elif key == "created-before":
                fields["created_before"] = _when(key, value)
            elif key == "created-after":
                fields["created_after"] = _when(key, value)
            else:
                raise fail(f"--filter {key}: unknown key (use {', '.join(_KEYS)})")
        except ValueError:
            raise fail(f"--filter {item!r}: not a valid {key}") from None
    return ExecutionFilter(**fields)


def format_bulk(result: BulkResult) -> str:
    """A few lines for people: what was (or would be) done, by outcome, and the ids."""
    n = len(result.results)
    verb = "stopped" if result.action.value == "stop" else "moved"
    lines = []
    if result.dry_run:
        lines.append(
            f"dry run: {n} execution(s) would be {verb}"
            + (" (more matched: BULK_MAX_IDS)" if result.truncated else "")
        )
    else:
        again = " (replayed: this operation was sent before)" if result.replayed else ""
        lines.append(f"operation {result.operation_id}{again}: {n} execution(s) taken")
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(result.counts.items()))
        if counts:
            lines.append(f"  {counts}")
        if result.truncated:
            lines.append("  more matched than BULK_MAX_IDS: run again with a new operation id")
    for execution_id, item in list(result.results.items())[:_SHOWN]:
        detail = f"  ({item.detail})" if item.detail else ""
        lines.append(f"  {execution_id}  {item.outcome.value}{detail}")
    if n > _SHOWN:
        lines.append(f"  ... and {n - _SHOWN} more (--json lists them all)")
    if result.dry_run and n:
        lines.append("Nothing was changed. Run again with --yes to do it.")
    return "\n".join(lines)
