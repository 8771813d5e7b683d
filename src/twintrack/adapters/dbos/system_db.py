"""The few DBOS internals the DBOS track needs beyond the public API, in one place.

DBOS 3.4 lets only workflow and step code write streams, but our events are written by the
service (before a workflow runs) and by the engine on the worker's own loop (outside DBOS's
step context). So writes go through the client's system database with the statement a step's
write uses (at-least-once: the reader dedupes by index), several values in one transaction,
with the NOTIFY that wakes readers in that transaction (delivered on commit: one wake-up per
commit and per stream, and no second round trip). Readers wait on the DBOS client's stream
listener events, fed by its LISTEN thread. Starting a prepared (DELAYED) workflow releases it
at once, in one statement, instead of waiting for DBOS's one-second background job. Each call
here is pinned by tests/unit/adapters/test_dbos_internals.py, so a DBOS upgrade that moves them
fails loudly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from dbos import DBOSClient
from dbos._serialization import WorkflowSerializationFormat, serialize_value
from dbos._sys_db import (
    WorkflowStatusString,
    _dbos_stream_closed_sentinel,
    _dbos_streams_channel,
    db_retry,
)
from dbos._utils import LoopAwareEvent

STREAM_KEY = "events"
CLOSED = _dbos_stream_closed_sentinel
_OFFSET_RETRIES = 50
_NOTIFY = sa.text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p")


_PORTABLE = WorkflowSerializationFormat.PORTABLE
_DELAYED = WorkflowStatusString.DELAYED.value
_ENQUEUED = WorkflowStatusString.ENQUEUED.value


def _sys_db(client: DBOSClient) -> Any:
    return client._sys_db


def write_streams(client: DBOSClient, values: Sequence[tuple[str, Any]]) -> None:
    """Append each (workflow id, value) in order, all in one transaction with the readers'
    NOTIFY. `CLOSED` as a value closes that stream. All or nothing: an offset taken by a
    concurrent writer of the same stream (unique violation) retries the whole batch, and so
    does a lost connection, for as long as the database is down (DBOS's own `db_retry`, as a
    step's stream write has: a duplicate after a commit whose answer was lost only adds rows
    the reader skips)."""
    sys_db = _sys_db(client)
    rows = [
        (workflow_id, *serialize_value(value, _PORTABLE, sys_db.serializer))
        for workflow_id, value in values
    ]
    _insert_and_notify(sys_db, rows)


@db_retry()
def _insert_and_notify(sys_db: Any, rows: list[tuple[str, str | None, str]]) -> None:
    payloads = sorted({f"{workflow_id}::{STREAM_KEY}" for workflow_id, _, _ in rows})
    for attempt in range(_OFFSET_RETRIES):
        try:
            with sys_db.engine.begin() as c:
                for workflow_id, serialized, serialization in rows:
                    c.execute(
                        sys_db._stream_insert_stmt(
                            workflow_id, 0, STREAM_KEY, serialized, serialization
                        )
                    )
                c.execute(_NOTIFY, {"channel": _dbos_streams_channel, "payloads": payloads})
            return
        except sa.exc.IntegrityError as exc:
            if not sys_db._is_unique_constraint_violation(exc) or attempt == _OFFSET_RETRIES - 1:
                raise
            time.sleep(0.002 * (attempt + 1))


def listen_stream(client: DBOSClient, workflow_id: str) -> tuple[LoopAwareEvent, str]:
    """An event the client's LISTEN thread sets on each commit to the stream; register it
    before reading, so a write between the read and the wait is not lost."""
    event, payload = _sys_db(client).register_stream_listener(workflow_id, STREAM_KEY)
    return event, payload


def unlisten_stream(client: DBOSClient, payload: str, event: LoopAwareEvent) -> None:
    _sys_db(client).unregister_stream_listener(payload, event)


def release_delayed(client: DBOSClient, workflow_id: str) -> bool:
    """Move this one DELAYED workflow to ENQUEUED now, in one statement (DBOS would need a delay
    update, then its table-wide promotion). False when it is not DELAYED (already released,
    running, finished, or missing)."""
    sys_db = _sys_db(client)
    ws = sys_db.tables.workflow_status
    with sys_db.engine.begin() as c:
        released = c.execute(
            sa.update(ws)
            .where(*sys_db._wf(ws, workflow_id))
            .where(ws.c.status == _DELAYED)
            .values(status=_ENQUEUED, updated_at=sys_db._now_ms_sql())
            .returning(ws.c.workflow_uuid)
        ).first()
    return released is not None
