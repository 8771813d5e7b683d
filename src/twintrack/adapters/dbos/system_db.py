"""The few DBOS internals the DBOS track needs beyond the public API, in one place.

DBOS 3.4 lets only workflow and step code write streams, but our events are written by the
service (before a workflow runs) and by the engine on the worker's own loop (outside DBOS's
step context). So writes go through the client's system database, exactly as a step's
write would (at-least-once: the reader dedupes by index), followed by the NOTIFY that a
launched DBOS would send from its notifier thread. Starting a prepared (DELAYED) workflow
promotes it at once instead of waiting for DBOS's one-second background job. Each call here
is pinned by tests/unit/adapters/test_dbos_internals.py, so a DBOS upgrade that moves them fails
loudly.
"""

from __future__ import annotations

from typing import Any

from dbos import DBOSClient
from dbos._serialization import WorkflowSerializationFormat

STREAM_KEY = "events"


def _sys_db(client: DBOSClient) -> Any:
    return client._sys_db


def write_stream(client: DBOSClient, workflow_id: str, value: Any) -> None:
    """Append `value` (JSON-compatible) to the workflow's event stream and wake readers."""
    sys_db = _sys_db(client)
    sys_db.write_stream_from_step(
        workflow_id, 0, STREAM_KEY, value, serialization_type=WorkflowSerializationFormat.PORTABLE
    )
    sys_db._flush_notifications()


def close_stream(client: DBOSClient, workflow_id: str) -> None:
    """Mark the stream closed, so readers end at once."""
    sys_db = _sys_db(client)
    sys_db.close_stream_from_step(workflow_id, 0, STREAM_KEY)
    sys_db._flush_notifications()


def promote_delayed(client: DBOSClient) -> None:
    """Move DELAYED workflows whose delay is over to ENQUEUED now."""
    _sys_db(client).transition_delayed_workflows()
