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

from collections.abc import Collection
from typing import Any

from twintrack.adapters.postgres.db import DriverConnection
from twintrack.adapters.postgres.execution_statements import move_set, move_values, record_of
from twintrack.adapters.postgres.recovery import RELEASED
from twintrack.adapters.postgres.tables import ExecutionRow
from twintrack.core.errors import NotFound
from twintrack.core.records import Claim, ExecutionRecord
from twintrack.domain.execution import ExecutionStatus, Track

_MOVED = ", ".join(f"moved.{c.name}" for c in ExecutionRow.__table__.columns)


_CLAIM_QUEUED_SQL = f"""
WITH target AS (
    SELECT id, status, track FROM executions WHERE id = $1 FOR UPDATE
), lease AS (
    INSERT INTO execution_claims AS c (execution_id, worker_id, generation, expires_at)
    SELECT id, CAST($2 AS text), 1, now() + make_interval(secs => $3)
    FROM target WHERE status = 'queued' AND track = $4
    ON CONFLICT (execution_id) DO UPDATE SET
        worker_id = excluded.worker_id,
        generation = c.generation + 1,
        claimed_at = now(),
        heartbeat_at = now(),
        expires_at = excluded.expires_at
    WHERE c.worker_id = $5 OR c.worker_id = excluded.worker_id OR c.expires_at < now()
    RETURNING generation, expires_at
), moved AS (
    UPDATE executions AS e SET
        status = 'running',
        updated_at = now(),
        started_at = coalesce(e.started_at, now()),
        attempt = e.attempt + 1
    WHERE e.id = $1 AND e.status = 'queued' AND EXISTS (SELECT 1 FROM lease)
    RETURNING e.*
)
SELECT (SELECT count(*) FROM target) AS found,
       lease.generation AS lease_generation, lease.expires_at AS lease_expires_at, {_MOVED}
FROM (SELECT 1) AS one LEFT JOIN lease ON true LEFT JOIN moved ON true
"""

_MOVE_HELD_SQL = f"""
WITH held AS (
    SELECT generation FROM execution_claims
    WHERE execution_id = $1 AND worker_id = $2 AND generation = $3
    FOR UPDATE
), moved AS (
    UPDATE executions AS e SET {move_set(4)}
    WHERE e.id = $1 AND e.status = ANY(CAST($10 AS text[])) AND EXISTS (SELECT 1 FROM held)
    RETURNING e.*
), released AS (
    UPDATE execution_claims SET worker_id = $12, expires_at = now()
    WHERE execution_id = $1 AND CAST($11 AS boolean) AND EXISTS (SELECT 1 FROM moved)
)
SELECT (SELECT count(*) FROM held) AS held, {_MOVED}
FROM (SELECT 1) AS one LEFT JOIN moved ON true
"""


async def claim_queued(
    connection: DriverConnection, execution_id: str, worker_id: str, ttl_s: float, track: Track
) -> tuple[Claim, ExecutionRecord] | None:
    """Lease a `queued` execution of `track` and move it to `running` (attempt + 1).

    None when it is not queued on that track or another worker holds a live lease on it;
    raises NotFound when it does not exist."""
    row = await connection.fetchrow(
        _CLAIM_QUEUED_SQL, execution_id, worker_id, float(ttl_s), track.value, RELEASED
    )
    if not row["found"]:
        raise NotFound("execution", execution_id)
    if row["lease_generation"] is None or row["id"] is None:
        return None
    claim = Claim(execution_id, worker_id, row["lease_generation"], row["lease_expires_at"])
    return claim, record_of(row)


async def move_held(
    connection: DriverConnection,
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
    row = await connection.fetchrow(
        _MOVE_HELD_SQL,
        claim.execution_id,
        claim.worker_id,
        claim.generation,
        *move_values(target, outputs, error_message, error_node_id, next_event_index),
        [s.value for s in sources],
        release,
        RELEASED,
    )
    if not row["held"]:
        return False
    if row["id"] is None:
        return True
    return record_of(row)
