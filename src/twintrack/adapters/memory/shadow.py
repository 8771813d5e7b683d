"""Shadow runs and the mismatch ledger in memory (unit tests of core/shadow.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from twintrack.adapters.memory.stores import MemoryExecutionStore
from twintrack.core.records import ExecutionRecord
from twintrack.core.shadow import RUNNING, Mismatch, ShadowOutcomes, ShadowRun
from twintrack.domain.execution import ExecutionStatus, Track


class MemoryShadowStore:
    """`core.shadow.ShadowStore` over the memory executions, with a clock a test may move."""

    def __init__(
        self,
        executions: MemoryExecutionStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.executions = executions
        self.clock = clock
        self.runs: dict[str, ShadowRun] = {}
        self.ledger: list[Mismatch] = []
        self._next_id = 1

    async def candidates(
        self, *, lookback_s: float, after: tuple[datetime, str] | None, limit: int
    ) -> list[ExecutionRecord]:
        since = self.clock() - timedelta(seconds=lookback_s)
        found = [
            r
            for r in self.executions.records.values()
            if r.status is ExecutionStatus.COMPLETED
            and r.parent_id is None
            and r.shadow_of is None
            and r.finished_at is not None
            and r.finished_at >= since
            and r.id not in self.runs
            and (after is None or (r.finished_at, r.id) > after)
        ]
        found.sort(key=lambda r: (r.finished_at, r.id))
        return found[:limit]

    async def reserve(self, run: ShadowRun) -> bool:
        if run.original_id in self.runs:
            return False
        self.runs[run.original_id] = dataclasses.replace(run, scheduled_at=self.clock())
        return True

    async def running(self) -> list[ShadowRun]:
        return [r for r in self.runs.values() if r.status == RUNNING]

    async def get(self, original_id: str) -> ShadowRun | None:
        return self.runs.get(original_id)

    async def queued(self, track: Track) -> int:
        return sum(
            1
            for r in self.executions.records.values()
            if r.track is track and r.status is ExecutionStatus.QUEUED and r.shadow_of is None
        )

    async def finish(
        self,
        original_id: str,
        status: str,
        replayed: dict[str, str],
        mismatch: Mismatch | None,
        *,
        ledger_size: int,
    ) -> None:
        run = self.runs[original_id]
        if run.status != RUNNING:
            return
        now = self.clock()
        self.runs[original_id] = dataclasses.replace(
            run, status=status, replayed=replayed, compared_at=now
        )
        if mismatch is not None:
            self.ledger.append(dataclasses.replace(mismatch, id=self._next_id, recorded_at=now))
            self._next_id += 1
            del self.ledger[:-ledger_size]

    async def mismatches(self, limit: int = 20) -> list[Mismatch]:
        return list(reversed(self.ledger))[:limit]

    async def outcomes(self, window_s: float) -> ShadowOutcomes:
        since = self.clock() - timedelta(seconds=window_s)
        done = [
            r for r in self.runs.values() if r.compared_at is not None and r.compared_at >= since
        ]
        return ShadowOutcomes(len(done), sum(1 for r in done if r.status == "mismatched"))
