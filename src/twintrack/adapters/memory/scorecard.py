"""The scorecard's samples in memory (unit tests of core/scorecard.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from twintrack.adapters.memory.recovery import MemoryRecoveryAudit
from twintrack.adapters.memory.shadow import MemoryShadowStore
from twintrack.adapters.memory.stores import MemoryExecutionStore
from twintrack.core.recovery_ports import Reason
from twintrack.core.scorecard import FALLBACK, NOT_RECOVERIES, REROUTED, ROUTED, ExecutionSample
from twintrack.core.shadow import RUNNING


class MemoryScorecardStore:
    """`ScorecardStore` over the memory executions, audit and shadow runs (the memory audit
    keeps no time: every row of an execution in the window counts)."""

    def __init__(
        self,
        executions: MemoryExecutionStore,
        audit: MemoryRecoveryAudit,
        shadows: MemoryShadowStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.executions = executions
        self.audit = audit
        self.shadows = shadows
        self.clock = clock

    async def samples(self, window_s: float) -> tuple[datetime, list[ExecutionSample]]:
        now = self.clock()
        since = now - timedelta(seconds=window_s)
        found: list[ExecutionSample] = []
        for r in self.executions.records.values():
            if r.shadow_of is not None or r.finished_at is None or r.finished_at < since:
                continue
            rows = [a for a in self.audit.rows if a.execution_id == r.id]
            run = self.shadows.runs.get(r.id)
            found.append(
                ExecutionSample(
                    track=r.track,
                    cohort=(
                        REROUTED
                        if any(a.reason is Reason.REROUTED for a in rows)
                        else FALLBACK
                        if r.fallback_reason is not None
                        else ROUTED
                    ),
                    status=r.status,
                    total_s=(r.finished_at - r.created_at).total_seconds(),
                    queue_s=(
                        (r.started_at - r.queued_at).total_seconds()
                        if r.started_at and r.queued_at
                        else None
                    ),
                    recoveries=sum(1 for a in rows if a.reason not in NOT_RECOVERIES),
                    shadow=None if run is None or run.status == RUNNING else run.status,
                )
            )
        return now, found
