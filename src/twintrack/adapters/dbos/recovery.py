"""DBOS's side of recovering gone executors: the `Workflows` port (core/recovery_ports.py).

What to recover, when, and the audit are core/dead_executors.py's; this only does it in DBOS:
hand a gone executor's PENDING workflows to live ones (DBOS re-runs them only for an executor
with the same id otherwise), and make sure a queued execution's workflow will run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from twintrack.adapters.dbos.queue import DbosTaskQueue
from twintrack.adapters.dbos.runtime import DbosRuntime
from twintrack.domain.execution import EventsBackend


class DbosWorkflows:
    def __init__(self, runtime: DbosRuntime, queue: DbosTaskQueue) -> None:
        self._runtime = runtime
        self._queue = queue

    @property
    def executor_id(self) -> str:
        return self._runtime.executor_id

    async def recover(self, executor_ids: Sequence[str]) -> list[str]:
        return await self._runtime.recover(executor_ids)

    async def redeliver(self, executions: Mapping[str, EventsBackend]) -> dict[str, str]:
        return await self._queue.redeliver(dict(executions))
