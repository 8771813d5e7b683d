"""The live rollout store and feed, and the guard's store, in memory (unit tests of core)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from twintrack.adapters.memory.stores import MemoryExecutionStore
from twintrack.core.guard import CohortFigures, GuardVerdict, WindowFigures
from twintrack.core.live_rollout import (
    RolloutChange,
    RolloutState,
    RolloutSuperseded,
    Switches,
)
from twintrack.domain.execution import ExecutionStatus, Track

_S = ExecutionStatus


class MemoryRolloutStore:
    """`RolloutStateStore` and `RolloutFeed` at once: a change calls every listener."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.clock = clock
        self.states: list[RolloutState] = []
        self._listeners: list[Callable[[], None]] = []

    async def seed(self, initial: Switches, *, changed_by: str, reason: str) -> RolloutState:
        if not self.states:
            self.states.append(RolloutState(initial, 1, self.clock(), changed_by, reason))
        return self.states[-1]

    async def load(self) -> RolloutState | None:
        return self.states[-1] if self.states else None

    async def change(
        self,
        change: RolloutChange,
        *,
        changed_by: str,
        reason: str,
        expected_version: int | None = None,
    ) -> RolloutState:
        if not self.states:
            raise LookupError("no rollout state yet")
        current = self.states[-1]
        if expected_version is not None and current.version != expected_version:
            raise RolloutSuperseded(expected_version, current)
        state = RolloutState(
            change.apply(current.switches), current.version + 1, self.clock(), changed_by, reason
        )
        self.states.append(state)
        for listener in self._listeners:
            listener()
        return state

    async def history(self, limit: int = 20) -> list[RolloutState]:
        return list(reversed(self.states))[:limit]

    async def start(self, on_change: Callable[[], None]) -> None:
        self._listeners.append(on_change)

    async def close(self) -> None:
        self._listeners.clear()


def _p99(values: list[float]) -> float | None:
    """Nearest-rank p99 (Postgres's percentile_disc)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


class MemoryGuardStore:
    """`GuardStore` over the memory executions, with a clock a test may move."""

    def __init__(
        self,
        executions: MemoryExecutionStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.executions = executions
        self.clock = clock
        self.verdicts: list[GuardVerdict] = []

    async def figures(self, *, window_s: float, stuck_after_s: float) -> WindowFigures:
        now = self.clock()
        since, stuck_before = (
            now - timedelta(seconds=window_s),
            now - timedelta(seconds=stuck_after_s),
        )
        cohorts = {}
        for track in Track:
            # A fallback ran on Kafka but is the DBOS cohort's (a failure): never a Kafka sample.
            rows = [
                r
                for r in self.executions.records.values()
                if r.track is track and r.shadow_of is None and r.fallback_reason is None
            ]
            ended = [
                r
                for r in rows
                if r.status in (_S.COMPLETED, _S.FAILED)
                and r.finished_at is not None
                and r.finished_at >= since
            ]
            durations = [
                (r.finished_at - r.created_at).total_seconds()
                for r in ended
                if r.status is _S.COMPLETED and r.finished_at is not None
            ]
            stuck = sum(
                1
                for r in rows
                if r.status in (_S.QUEUED, _S.RUNNING)
                and (r.queued_at or r.created_at) < stuck_before
            )
            fallbacks = sum(
                1
                for r in self.executions.records.values()
                if r.fallback_reason is not None and r.created_at >= since
            )
            cohorts[track] = CohortFigures(
                track=track,
                finished=len(ended),
                failed=sum(1 for r in ended if r.status is _S.FAILED),
                p99_s=_p99(durations),
                stuck=stuck,
                fallbacks=fallbacks if track is Track.DBOS else 0,
            )
        return WindowFigures(now=now, cohorts=cohorts)

    async def record(self, verdict: GuardVerdict) -> GuardVerdict:
        recorded = replace(verdict, decided_at=self.clock())
        self.verdicts.append(recorded)
        return recorded

    async def recent(self, limit: int = 20) -> list[GuardVerdict]:
        return list(reversed(self.verdicts))[:limit]
