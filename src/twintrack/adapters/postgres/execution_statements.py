"""The executions' hot single statements, on the driver (`db.driver`): read one, insert a root.

Every create inserts a root and most API calls read one execution; through the ORM each cost
about 0.8 ms of CPU, on asyncpg about 0.2 (measured on this project's tables). The text is
built once from the table's columns, so a column added to `ExecutionRow` is read here too;
values come back as the ORM returns them (JSON decoded by the connection's codecs, enums as
their text, which the record validates).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from twintrack.adapters.postgres.db import DriverConnection
from twintrack.adapters.postgres.tables import ExecutionRow
from twintrack.core.records import ExecutionRecord
from twintrack.domain.execution import (
    EventsBackend,
    ExecutionOptions,
    ExecutionStatus,
    Track,
    TriggerEvent,
)

_COLUMNS = ", ".join(c.name for c in ExecutionRow.__table__.columns)

GET_SQL = f"SELECT {_COLUMNS} FROM executions WHERE id = $1"
GET_OWNED_SQL = (
    f"SELECT {_COLUMNS} FROM executions WHERE id = $1 AND owner_id = $2 AND shadow_of IS NULL"
)

INSERT_ROOT_SQL = f"""
INSERT INTO executions (
    id, root_id, parent_id, depth, owner_id, flow_id, flow_version, track, events_backend,
    status, options, trigger_events, next_event_index, shadow_of, fallback_reason
) VALUES ($1, $1, NULL, 0, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING {_COLUMNS}
"""


def move_set(first: int) -> str:
    """The SET clause of every status move, its parameters numbered from `first`: target,
    whether it is terminal, outputs (JSON text), error message, error node, next event index
    (each but the first two NULL to keep the current value).

    The one place the move's bookkeeping is written: `queued_at` and `started_at` keep the
    first time, `attempt` counts the moves from `queued` to `running`, `finished_at` is set by
    a terminal move, `next_event_index` never goes down.
    """
    target, terminal, outputs, message, node, index = (f"${first + i}" for i in range(6))
    return f"""
    status = CAST({target} AS text),
    updated_at = now(),
    queued_at = CASE WHEN {target} = 'queued' THEN coalesce(e.queued_at, now())
                     ELSE e.queued_at END,
    started_at = CASE WHEN {target} = 'running' THEN coalesce(e.started_at, now())
                      ELSE e.started_at END,
    attempt = CASE WHEN {target} = 'running' AND e.status = 'queued' THEN e.attempt + 1
                   ELSE e.attempt END,
    finished_at = CASE WHEN CAST({terminal} AS boolean) THEN now() ELSE e.finished_at END,
    outputs = coalesce(CAST({outputs} AS jsonb), e.outputs),
    error_message = coalesce(CAST({message} AS text), e.error_message),
    error_node_id = coalesce(CAST({node} AS text), e.error_node_id),
    next_event_index = greatest(e.next_event_index, coalesce(CAST({index} AS bigint), 0))"""


def move_values(
    target: ExecutionStatus,
    outputs: dict[str, Any] | None,
    error_message: str | None,
    error_node_id: str | None,
    next_event_index: int | None,
) -> tuple[Any, ...]:
    """The parameters of `move_set`, in its order."""
    return (
        target.value,
        target.is_terminal,
        None if outputs is None else json.dumps(outputs),
        error_message,
        error_node_id,
        next_event_index,
    )


#: `PostgresExecutionStore.transition`'s move; None when refused (the store tells why).
MOVE_SQL = f"""
UPDATE executions AS e SET {move_set(2)}
WHERE e.id = $1 AND e.status = ANY(CAST($8 AS text[]))
  AND (CAST($9 AS text) IS NULL OR (e.owner_id = $9 AND e.shadow_of IS NULL))
RETURNING {_COLUMNS}
"""
STATUS_SQL = """
SELECT status FROM executions
WHERE id = $1 AND (CAST($2 AS text) IS NULL OR (owner_id = $2 AND shadow_of IS NULL))
"""


def record_of(row: Any) -> ExecutionRecord:
    """The record of a row these statements returned (an `asyncpg.Record`)."""
    return ExecutionRecord.model_validate(dict(row))


async def get(
    connection: DriverConnection, execution_id: str, owner_id: str | None
) -> ExecutionRecord | None:
    """The execution (the owner's, when `owner_id` is given; a shadow run is nobody's)."""
    if owner_id is None:
        row = await connection.fetchrow(GET_SQL, execution_id)
    else:
        row = await connection.fetchrow(GET_OWNED_SQL, execution_id, owner_id)
    return None if row is None else record_of(row)


async def insert_root(
    connection: DriverConnection,
    *,
    execution_id: str,
    owner_id: str,
    flow_id: str,
    flow_version: int,
    track: Track,
    events_backend: EventsBackend,
    options: ExecutionOptions,
    trigger_events: Iterable[TriggerEvent],
    next_event_index: int,
    shadow_of: str | None,
    fallback_reason: str | None,
) -> ExecutionRecord:
    """Insert a root execution in `created` (asyncpg's UniqueViolationError when the id is
    taken, ForeignKeyViolationError when the flow version does not exist)."""
    row = await connection.fetchrow(
        INSERT_ROOT_SQL,
        execution_id,
        owner_id,
        flow_id,
        flow_version,
        track.value,
        events_backend.value,
        ExecutionStatus.CREATED.value,
        options.model_dump_json(),
        json.dumps([e.model_dump(mode="json") for e in trigger_events]),
        next_event_index,
        shadow_of,
        fallback_reason,
    )
    return record_of(row)


async def move(
    connection: DriverConnection,
    execution_id: str,
    target: ExecutionStatus,
    *,
    sources: Iterable[ExecutionStatus],
    owner_id: str | None,
    outputs: dict[str, Any] | None,
    error_message: str | None,
    error_node_id: str | None,
    next_event_index: int | None,
) -> ExecutionRecord | None:
    """Move the execution to `target` if its status is one of `sources`: the new row, else
    None (refused, or no such execution of `owner_id`: the caller tells which)."""
    row = await connection.fetchrow(
        MOVE_SQL,
        execution_id,
        *move_values(target, outputs, error_message, error_node_id, next_event_index),
        [s.value for s in sources],
        owner_id,
    )
    return None if row is None else record_of(row)


async def status(
    connection: DriverConnection, execution_id: str, owner_id: str | None
) -> ExecutionStatus | None:
    """The execution's status now (None: no such execution of `owner_id`)."""
    value = await connection.fetchval(STATUS_SQL, execution_id, owner_id)
    return None if value is None else ExecutionStatus(value)
