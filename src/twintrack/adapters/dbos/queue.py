"""DbosTaskQueue: starting a DBOS-track execution enqueues its workflow (id = execution id)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dbos import DBOSClient
from twintrack.adapters.dbos.enqueue import enqueue_workflow
from twintrack.adapters.dbos.names import QUEUE_NAME
from twintrack.adapters.dbos.runtime import (
    DbosConfig,
    blocking,
    make_client,
)
from twintrack.adapters.dbos.system_db import release_delayed
from twintrack.core.transient import retry_transient
from twintrack.domain.execution import EventsBackend, Track
from twintrack.observability.tracing import task_sent


class DbosTaskQueue:
    track = Track.DBOS

    def __init__(
        self,
        config: DbosConfig,
        park_s: float = 86_400.0,
        *,
        system_sessions: async_sessionmaker[AsyncSession],
    ) -> None:
        """`system_sessions`: one-statement sessions on our pool on the DBOS system database,
        for the enqueue (adapters/dbos/enqueue.py)."""
        self.config = config
        self.park_s = park_s
        self._system_sessions = system_sessions
        self._client: DBOSClient | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = await blocking(make_client, self.config)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await blocking(client.destroy)

    def _client_or_fail(self) -> DBOSClient:
        if self._client is None:
            raise RuntimeError("DbosTaskQueue.start() was not called")
        return self._client

    async def _enqueue(
        self, execution_id: str, delay_s: float | None = None, traceparent: str | None = None
    ) -> None:
        sessions = self._system_sessions
        await retry_transient(
            lambda: enqueue_workflow(
                sessions,
                execution_id=execution_id,
                traceparent=traceparent,
                application_version=self.config.application_version,
                application_name=self.config.app_name,
                delay_s=delay_s,
            ),
            what=f"enqueue {execution_id}",
        )

    async def prepare(self, execution_id: str, events_backend: EventsBackend) -> None:
        """With DBOS streams, the workflow must exist before its first event: it is made now,
        DELAYED (which holds no queue slot), and released on start. The delay outlasts the
        start timeout, which the sweeper enforces first."""
        if events_backend is EventsBackend.DBOS:
            await self._enqueue(execution_id, delay_s=self.park_s)

    async def enqueue(
        self,
        execution_id: str,
        attempt: int,
        events_backend: EventsBackend = EventsBackend.KAFKA,
    ) -> None:
        """The workflow id is the execution id, so a second start (or a retried one) is the
        same workflow: DBOS runs it once. The pinned version makes it recoverable. A workflow
        `prepare` parked is released at once, in one statement (DBOS's own job would take up
        to a second); only one that is not parked (missing, say) is enqueued."""
        with task_sent(
            execution_id=execution_id,
            attempt=attempt,
            track=self.track.value,
            events_backend=events_backend.value,
            system="dbos",
        ) as traceparent:
            if events_backend is EventsBackend.DBOS:
                # Made at creation, its inputs are fixed: its run continues the row's trace.
                client = self._client_or_fail()
                # DBOS retries its own statements through an outage; this internal one it does
                # not.
                released = await retry_transient(
                    lambda: blocking(release_delayed, client, execution_id),
                    what=f"release {execution_id}",
                )
                if released:
                    return
            await self._enqueue(execution_id, traceparent=traceparent)

    async def redeliver(self, executions: dict[str, EventsBackend]) -> dict[str, str]:
        """Make sure the workflow of each queued execution will run; what was done to which.

        For an enqueue that failed after the row moved to `queued` (the repair sweep's job): a
        missing workflow is enqueued, a parked one released, one that ended without running the
        execution (its row still says queued) rewound to its first step, same id. ENQUEUED and
        PENDING ones are on their way and left alone."""
        client = self._client_or_fail()
        found = {
            w.workflow_id: w.status
            for w in await client.list_workflows_async(
                workflow_ids=list(executions), load_input=False, load_output=False
            )
        }
        done: dict[str, str] = {}
        for execution_id, backend in executions.items():
            status = found.get(execution_id)
            if status is None:
                await self._enqueue(execution_id)
                done[execution_id] = "enqueued its missing workflow"
            elif status == "DELAYED":
                await self.enqueue(execution_id, 0, backend)
                done[execution_id] = "released its parked workflow"
            elif status not in ("ENQUEUED", "PENDING"):
                await client.rewind_workflow_async(execution_id, queue_name=QUEUE_NAME)
                done[execution_id] = f"rewound its {status} workflow"
        return done

    async def cancel(self, execution_id: str) -> None:
        """Drop a workflow that must not run (stopped before any worker took it)."""
        if self._client is not None:
            await self._client.cancel_workflow_async(execution_id)
