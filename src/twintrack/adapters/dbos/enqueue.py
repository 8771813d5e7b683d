"""Enqueue an execution's workflow in one statement on the service's own pool.

DBOSClient.enqueue runs DBOS's `init_workflow` on a worker thread (a thread hop per start,
GIL contention with the event loop, and several round trips on DBOS's sync pool). DBOS 3.4's
system schema ships the same insert as a function, `dbos.enqueue_workflow` (the workflow row
and its inputs, portable-JSON serialized, ON CONFLICT on the id: enqueueing an existing
workflow changes nothing, so a second or retried start is still the same workflow, run once).
Called here over asyncpg: one round trip, no thread. Its signature is pinned by
tests/unit/adapters/test_dbos_internals.py; tests/e2e exercises it on every DBOS-track start.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.dbos.names import QUEUE_NAME, WORKFLOW_NAME

SCHEMA = "dbos"
_ENQUEUE = text(
    f"SELECT {SCHEMA}.enqueue_workflow("
    "workflow_name => :name, queue_name => :queue, "
    "positional_args => CAST(:args AS json[]), workflow_id => :id, app_version => :version, "
    "delay_until_epoch_ms => :delay_until, application_name => :app)"
)


async def enqueue_workflow(
    sessions: async_sessionmaker[AsyncSession],
    *,
    execution_id: str,
    traceparent: str | None,
    application_version: str,
    application_name: str,
    delay_s: float | None = None,
) -> None:
    """The execution workflow (id = execution id) on our queue; DELAYED for `delay_s`."""
    delay_until = None if delay_s is None else int((time.time() + delay_s) * 1000)
    async with sessions() as session:  # one statement, atomic by itself: no BEGIN/COMMIT
        await session.execute(
            _ENQUEUE,
            {
                "name": WORKFLOW_NAME,
                "queue": QUEUE_NAME,
                "args": [json.dumps(execution_id), json.dumps(traceparent)],
                "id": execution_id,
                "version": application_version,
                "delay_until": delay_until,
                "app": application_name,
            },
        )
