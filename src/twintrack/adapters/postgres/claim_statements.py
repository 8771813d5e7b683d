"""The claim's two hot statements, each one round trip: take a queued execution, and a fenced move.

Every execution is claimed once and finished once on either track, and the transactions these
replace took five round trips each (BEGIN, lock, write, write, COMMIT) plus the building and
compiling of three SQLAlchemy statements in Python, about a fifth of a worker's CPU under load.
Each is now one data-modifying CTE in autocommit, its text built once. A CTE's parts run as one
statement: the row locks of its first part are held by the writes after it, and it commits as a
whole. Only the common case is handled here; the caller falls back to the general transaction
(adapters/postgres/claims.py) for everything else (a takeover, a refused move to explain).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from sqlalchemy import BigInteger, ColumnClause, DateTime, TextualSelect, column, text
from sqlalchemy.ext.asyncio import AsyncSession

from twintrack.adapters.postgres.recovery import RELEASED
from twintrack.adapters.postgres.tables import ExecutionRow
from twintrack.core.records import Claim, ExecutionRecord
from twintrack.domain.execution import ExecutionStatus, Track

_COLUMNS = list(ExecutionRow.__table__.columns)
_MOVED = ", ".join(f"moved.{c.name}" for c in _COLUMNS)


def _typed(sql: str, *leading: ColumnClause[Any]) -> TextualSelect:
    """`sql` whose result columns are `leading`, then every execution column in table order,
    typed (matched by position) so enums, JSON and timestamps read as the ORM reads them."""
    return text(sql).columns(*leading, *_COLUMNS)


_CLAIM_QUEUED_SQL = f"""
WITH target AS (
    SELECT id, status, track FROM executions WHERE id = :id FOR UPDATE
), lease AS (
    INSERT INTO execution_claims AS c (execution_id, worker_id, generation, expires_at)
    SELECT id, CAST(:worker AS text), 1, now() + make_interval(secs => :ttl)
    FROM target WHERE status = 'queued' AND track = :track
    ON CONFLICT (execution_id) DO UPDATE SET
        worker_id = excluded.worker_id,
        generation = c.generation + 1,
        claimed_at = now(),
        heartbeat_at = now(),
        expires_at = excluded.expires_at
    WHERE c.worker_id = :released OR c.worker_id = excluded.worker_id OR c.expires_at < now()
    RETURNING generation, expires_at
), moved AS (
    UPDATE executions AS e SET
        status = 'running',
        updated_at = now(),
        started_at = coalesce(e.started_at, now()),
        attempt = e.attempt + 1
    WHERE e.id = :id AND e.status = 'queued' AND EXISTS (SELECT 1 FROM lease)
    RETURNING e.*
)
SELECT (SELECT count(*) FROM target) AS found,
       lease.generation AS lease_generation, lease.expires_at AS lease_expires_at, {_MOVED}
FROM (SELECT 1) AS one LEFT JOIN lease ON true LEFT JOIN moved ON true
"""

_MOVE_HELD_SQL = f"""
WITH held AS (
    SELECT generation FROM execution_claims
    WHERE execution_id = :id AND worker_id = :worker AND generation = :generation
    FOR UPDATE
), moved AS (
    UPDATE executions AS e SET
        status = CAST(:target AS text),
        updated_at = now(),
        queued_at = CASE WHEN :target = 'queued' THEN coalesce(e.queued_at, now())
                         ELSE e.queued_at END,
        started_at = CASE WHEN :target = 'running' THEN coalesce(e.started_at, now())
                          ELSE e.started_at END,
        attempt = CASE WHEN :target = 'running' AND e.status = 'queued' THEN e.attempt + 1
                       ELSE e.attempt END,
        finished_at = CASE WHEN CAST(:terminal AS boolean) THEN now() ELSE e.finished_at END,
        outputs = coalesce(CAST(:outputs AS jsonb), e.outputs),
        error_message = coalesce(CAST(:error_message AS text), e.error_message),
        error_node_id = coalesce(CAST(:error_node_id AS text), e.error_node_id),
        next_event_index = greatest(e.next_event_index, coalesce(CAST(:next_index AS bigint), 0))
    WHERE e.id = :id AND e.status = ANY(CAST(:sources AS text[])) AND EXISTS (SELECT 1 FROM held)
    RETURNING e.*
), released AS (
    UPDATE execution_claims SET worker_id = :released, expires_at = now()
    WHERE execution_id = :id AND CAST(:release AS boolean) AND EXISTS (SELECT 1 FROM moved)
)
SELECT (SELECT count(*) FROM held) AS held, {_MOVED}
FROM (SELECT 1) AS one LEFT JOIN moved ON true
"""

_CLAIM_QUEUED: TextualSelect = _typed(
    _CLAIM_QUEUED_SQL,
    column("found", BigInteger),
    column("lease_generation", BigInteger),
    column("lease_expires_at", DateTime(timezone=True)),
)
_MOVE_HELD: TextualSelect = _typed(_MOVE_HELD_SQL, column("held", BigInteger))


class NotFoundRow(Exception):
    """No execution has that id (the caller raises its NotFound)."""


async def claim_queued(
    session: AsyncSession, execution_id: str, worker_id: str, ttl_s: float, track: Track
) -> tuple[Claim, ExecutionRecord] | None:
    """Lease a `queued` execution of `track` and move it to `running` (attempt + 1).

    None when it is not queued on that track or another worker holds a live lease on it;
    raises NotFoundRow when it does not exist."""
    row = (
        await session.execute(
            _CLAIM_QUEUED,
            {
                "id": execution_id,
                "worker": worker_id,
                "ttl": float(ttl_s),
                "track": track.value,
                "released": RELEASED,
            },
        )
    ).one()
    if not row.found:
        raise NotFoundRow(execution_id)
    if row.lease_generation is None or row.id is None:
        return None
    claim = Claim(execution_id, worker_id, row.lease_generation, row.lease_expires_at)
    return claim, ExecutionRecord.model_validate(row)


async def move_held(
    session: AsyncSession,
    claim: Claim,
    target: ExecutionStatus,
    *,
    sources: Collection[ExecutionStatus],
    release: bool,
    outputs: dict[str, Any] | None,
    error_message: str | None,
    error_node_id: str | None,
    next_event_index: int | None,
) -> ExecutionRecord | bool:
    """Move the execution to `target` from one of `sources` while `claim` still holds it, and
    end the lease with it if `release`: the new row; False when the claim is no longer held;
    True when it is held but the move did not apply (the caller explains the refusal)."""
    row = (
        await session.execute(
            _MOVE_HELD,
            {
                "id": claim.execution_id,
                "worker": claim.worker_id,
                "generation": claim.generation,
                "target": target.value,
                "terminal": target.is_terminal,
                "outputs": None if outputs is None else json.dumps(outputs),
                "error_message": error_message,
                "error_node_id": error_node_id,
                "next_index": next_event_index,
                "sources": [s.value for s in sources],
                "release": release,
                "released": RELEASED,
            },
        )
    ).one()
    if not row.held:
        return False
    if row.id is None:
        return True
    return ExecutionRecord.model_validate(row)
