"""DbosTaskQueue: starting a DBOS-track execution enqueues its workflow (id = execution id)."""

from __future__ import annotations

from dbos import DBOSClient

from twintrack.domain.execution import Track
from twintrack.tracks.dbos.runtime import (
    QUEUE_NAME,
    WORKFLOW_NAME,
    DbosConfig,
    blocking,
    make_client,
)


class DbosTaskQueue:
    track = Track.DBOS

    def __init__(self, config: DbosConfig) -> None:
        self.config = config
        self._client: DBOSClient | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = await blocking(make_client, self.config)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await blocking(client.destroy)

    async def enqueue(self, execution_id: str, attempt: int) -> None:
        """The workflow id is the execution id, so a second start (or a retried one) is the
        same workflow: DBOS runs it once. The pinned version makes it recoverable."""
        if self._client is None:
            raise RuntimeError("DbosTaskQueue.start() was not called")
        await self._client.enqueue_async(
            {
                "workflow_name": WORKFLOW_NAME,
                "queue_name": QUEUE_NAME,
                "workflow_id": execution_id,
                "app_version": self.config.application_version,
            },
            execution_id,
        )

    async def cancel(self, execution_id: str) -> None:
        """Drop a workflow that must not run (stopped before any worker took it)."""
        if self._client is not None:
            await self._client.cancel_workflow_async(execution_id)
