"""Recovery of DBOS executors that will not come back, and of workflows nothing will run.

DBOS re-runs a PENDING workflow only when an executor with the same id starts again. A
worker that died for good (scaled down, host lost) would strand its workflows, so the DBOS
workers elect one of them (its own leader, core/sweeper.py) to watch the worker registry: a
DBOS worker that stopped heartbeating, or stopped without finishing its workflows, has its
PENDING workflows handed to live workers, with an audit row each.

The same leader repairs DBOS-track executions that no workflow will run: left `queued` (the
enqueue after the start's commit failed, or the process died between the two), or `running`
with no live claim while their workflow ended (its step raised before the run began, e.g. on
a database error). After DBOS_REPAIR_QUEUED_S the workflow is enqueued, released or rewound,
at most `batch` per sweep, each with an audit row: a start is never `queued` forever, and a run
whose workflow died is taken over like any other.
"""

from __future__ import annotations

import structlog

from twintrack.core.audit import AuditTrail
from twintrack.core.recovery_ports import GoneWorkers, Reason, Recovery, RecoveryStore, Workflows
from twintrack.domain.execution import ExecutionStatus, Track

log = structlog.get_logger()
_UNFINISHED_STARTED = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.PAUSED)


def gone_executor(attempt: int, executor: str) -> str:
    return (
        f"attempt {attempt} on worker {executor} stopped renewing its claim (its DBOS "
        "executor stopped or went silent)"
    )


class DeadExecutorSweeper:
    def __init__(
        self,
        *,
        store: RecoveryStore,
        audit: AuditTrail,
        registry: GoneWorkers,
        workflows: Workflows,
        silence_s: float,
        repair_queued_s: float = 30.0,
        batch: int = 200,
    ) -> None:
        self._store = store
        self._audit = audit
        self._registry = registry
        self._workflows = workflows
        self.silence_s = silence_s
        self.repair_queued_s = repair_queued_s
        self.batch = batch

    async def sweep(self) -> list[str]:
        """Recover the workflows of every gone DBOS executor; the recovered workflow ids."""
        gone = [
            worker_id
            for worker_id in await self._registry.gone(self.silence_s, track=Track.DBOS.value)
            if worker_id != self._workflows.executor_id
        ]
        recovered: list[str] = []
        for executor in gone:
            ids = await self._workflows.recover([executor])
            if ids:
                runs = await self._store.attempts(ids)
                await self._audit.record(
                    *(
                        Recovery(
                            eid,
                            track,
                            Reason.DEAD_EXECUTOR,
                            n,
                            executor,
                            gone_executor(n, executor),
                        )
                        for eid, (track, n) in runs.items()
                    )
                )
                log.warning("recovered a gone executor's workflows", executor=executor, ids=ids)
            recovered += ids
        return recovered

    async def repair_queued(self) -> list[str]:
        """Redeliver DBOS-track executions unfinished for `repair_queued_s` with no live claim
        whose workflow is not on its way (see the module docstring); the ids repaired."""
        untouched = await self._store.touch_untouched(
            track=Track.DBOS,
            statuses=_UNFINISHED_STARTED,
            older_than_s=self.repair_queued_s,
            limit=self.batch,
        )
        if not untouched:
            return []
        done = await self._workflows.redeliver(
            {u.execution_id: u.events_backend for u in untouched}
        )
        if done:
            await self._audit.record(
                *(
                    Recovery(
                        u.execution_id,
                        Track.DBOS,
                        Reason.REPAIR_QUEUED,
                        u.attempt,
                        None,
                        done[u.execution_id],
                    )
                    for u in untouched
                    if u.execution_id in done
                )
            )
            log.warning("repaired executions no workflow would run", done=done)
        return list(done)
