"""Recovery of DBOS executors that will not come back.

DBOS re-runs a PENDING workflow only when an executor with the same id starts again. A
worker that died for good (scaled down, host lost) would strand its workflows, so the DBOS
workers elect one of them (an advisory lock) to watch the worker registry: a DBOS worker
that stopped heartbeating, or stopped without finishing its workflows, has its PENDING
workflows re-enqueued through DBOS, and any live worker runs them.

The same leader repairs DBOS-track executions that no workflow will run: left `queued` (the
enqueue after the start's commit failed, or the process died between the two), or `running`
with no live claim while their workflow ended (its step raised before the run began, e.g. on
a database error). After DBOS_REPAIR_QUEUED_S the workflow is enqueued, released or rewound
(DbosTaskQueue.redeliver), at most `batch` per sweep, each with an audit row: a start is never
`queued` forever, and a run whose workflow died is taken over like any other.
"""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy import func, insert, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from twintrack.adapters.dbos.queue import DbosTaskQueue
from twintrack.adapters.dbos.runtime import DbosRuntime
from twintrack.adapters.postgres.claims import touch_unclaimed
from twintrack.adapters.postgres.leader import AdvisoryLeader
from twintrack.adapters.postgres.tables import ExecutionRecoveryRow, ExecutionRow
from twintrack.adapters.postgres.workers import WorkerRegistry
from twintrack.core.attempts import audit
from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.observability.metrics import RECOVERIES

log = structlog.get_logger()
_UNFINISHED_STARTED = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.PAUSED)
LOCK_KEY = 0x7477696E64626F73  # "twindbos"


class DeadExecutorSweeper:
    def __init__(
        self,
        *,
        db_engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        registry: WorkerRegistry,
        runtime: DbosRuntime,
        queue: DbosTaskQueue,
        silence_s: float,
        interval_s: float,
        repair_queued_s: float = 30.0,
        batch: int = 200,
    ) -> None:
        self._leader = AdvisoryLeader(db_engine, LOCK_KEY, "dead-executor sweeper")
        self._sessions = sessions
        self._registry = registry
        self._runtime = runtime
        self._queue = queue
        self.silence_s = silence_s
        self.interval_s = interval_s
        self.repair_queued_s = repair_queued_s
        self.batch = batch

    async def sweep(self) -> list[str]:
        """Recover the workflows of every gone DBOS executor; the recovered workflow ids."""
        gone = [
            worker_id
            for worker_id in await self._registry.gone(self.silence_s, track="dbos")
            if worker_id != self._runtime.executor_id
        ]
        recovered: list[str] = []
        for executor in gone:
            ids = await self._runtime.recover([executor])
            if ids:
                await self._audit(executor, ids)
                log.warning("recovered a gone executor's workflows", executor=executor, ids=ids)
            recovered += ids
        return recovered

    async def _audit(self, executor: str, execution_ids: list[str]) -> None:
        """One `execution_recoveries` row per recovered execution, as on the Kafka track."""
        async with self._sessions.begin() as session:
            await session.execute(
                insert(ExecutionRecoveryRow).from_select(
                    ["execution_id", "track", "reason", "previous_worker_id", "attempt", "detail"],
                    select(
                        ExecutionRow.id,
                        ExecutionRow.track,
                        literal("dead_executor"),
                        literal(executor),
                        ExecutionRow.attempt,
                        func.concat(
                            "attempt ",
                            ExecutionRow.attempt,
                            f" on worker {executor} stopped renewing its claim (its DBOS "
                            "executor stopped or went silent)",
                        ),
                    ).where(ExecutionRow.id.in_(execution_ids)),
                )
            )
        RECOVERIES.labels("dbos", "dead_executor").inc(len(execution_ids))

    async def repair_queued(self) -> list[str]:
        """Redeliver DBOS-track executions unfinished for `repair_queued_s` with no live claim
        whose workflow is not on its way (see the module docstring); the ids repaired."""
        async with self._sessions.begin() as session:
            rows = await touch_unclaimed(
                session,
                track=Track.DBOS,
                statuses=_UNFINISHED_STARTED,
                older_than_s=self.repair_queued_s,
                limit=self.batch,
            )
        if not rows:
            return []
        done = await self._queue.redeliver({r.id: r.events_backend for r in rows})
        if done:
            async with self._sessions.begin() as session:
                for row in rows:
                    if row.id in done:
                        audit(
                            session,
                            execution_id=row.id,
                            track=Track.DBOS,
                            reason="repair_queued",
                            worker_id=None,
                            attempt=row.attempt,
                            detail=done[row.id],
                        )
            RECOVERIES.labels("dbos", "repair_queued").inc(len(done))
            log.warning("repaired executions no workflow would run", done=done)
        return list(done)

    async def run(self) -> None:
        try:
            while True:
                if await self._leader.lead():
                    try:
                        await self.sweep()
                        await self.repair_queued()
                    except Exception:
                        log.exception("dead-executor sweep failed")
                await asyncio.sleep(self.interval_s)
        finally:
            await self._leader.release()
