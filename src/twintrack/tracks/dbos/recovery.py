"""Recovery of DBOS executors that will not come back.

DBOS re-runs a PENDING workflow only when an executor with the same id starts again. A
worker that died for good (scaled down, host lost) would strand its workflows, so the DBOS
workers elect one of them (an advisory lock) to watch the worker registry: a DBOS worker
that stopped heartbeating, or stopped without finishing its workflows, has its PENDING
workflows re-enqueued through DBOS, and any live worker runs them.
"""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy import insert, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from twintrack.metrics import RECOVERIES
from twintrack.store.leader import AdvisoryLeader
from twintrack.store.tables import ExecutionRecoveryRow, ExecutionRow
from twintrack.store.workers import WorkerRegistry
from twintrack.tracks.dbos.runtime import DbosRuntime

log = structlog.get_logger()
LOCK_KEY = 0x7477696E64626F73  # "twindbos"


class DeadExecutorSweeper:
    def __init__(
        self,
        *,
        db_engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        registry: WorkerRegistry,
        runtime: DbosRuntime,
        silence_s: float,
        interval_s: float,
    ) -> None:
        self._leader = AdvisoryLeader(db_engine, LOCK_KEY, "dead-executor sweeper")
        self._sessions = sessions
        self._registry = registry
        self._runtime = runtime
        self.silence_s = silence_s
        self.interval_s = interval_s

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
                    ["execution_id", "track", "reason", "previous_worker_id", "attempt"],
                    select(
                        ExecutionRow.id,
                        ExecutionRow.track,
                        literal("dead_executor"),
                        literal(executor),
                        ExecutionRow.attempt,
                    ).where(ExecutionRow.id.in_(execution_ids)),
                )
            )
        RECOVERIES.labels("dbos", "dead_executor").inc(len(execution_ids))

    async def run(self) -> None:
        try:
            while True:
                if await self._leader.lead():
                    try:
                        await self.sweep()
                    except Exception:
                        log.exception("dead-executor sweep failed")
                await asyncio.sleep(self.interval_s)
        finally:
            await self._leader.release()
