"""Claims: which worker runs an execution (either track), until when, under which generation.

A claim is a lease in Postgres. Every claim of an execution bumps its `generation`, and every
write a worker makes for that execution (status, outputs) is conditional on still holding
(worker, generation): a worker that lost its lease can no longer write. Claim rows are never
deleted while the execution lives, so generations only grow; release just ends the lease.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres.claim_statements import claim_queued, move_held
from twintrack.adapters.postgres.db import driver
from twintrack.adapters.postgres.executions import PostgresExecutionStore, transition_sources
from twintrack.adapters.postgres.recovery import RELEASED, audit_row
from twintrack.adapters.postgres.tables import ExecutionClaimRow, ExecutionRow
from twintrack.core.errors import NotFound
from twintrack.core.records import Claim, ExecutionRecord
from twintrack.core.recovery_ports import Reason, Recovery
from twintrack.domain.execution import ExecutionStatus, Track

_S = ExecutionStatus
ACTIVE = (_S.RUNNING, _S.PAUSED)
_ONE_STATEMENT_FIELDS = frozenset({"outputs", "error_message", "error_node_id", "next_event_index"})


def _ttl(seconds: float) -> Any:
    return func.now() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)


class PostgresClaimStore:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], executions: PostgresExecutionStore
    ):
        self._sessions = sessions
        self._executions = executions

    async def claim(
        self,
        execution_id: str,
        worker_id: str,
        ttl_s: float,
        *,
        track: Track,
        takeover: bool = False,
    ) -> tuple[Claim, ExecutionRecord] | None:
        """Take a queued execution: lease it, bump the generation, move it to `running`.

        With `takeover` (a DBOS workflow re-run after its worker died), a `running` or `paused`
        execution whose lease expired is taken too, as a new attempt.

        None when there is nothing to take: the execution is not queued (a duplicate task, or
        stopped before any worker got it), it was rerouted to another `track` than the
        caller's, or another worker holds a live lease on it.
        Raises NotFound for an execution that does not exist.
        """
        if not takeover:
            async with driver(self._sessions) as connection:
                return await claim_queued(connection, execution_id, worker_id, ttl_s, track)
        async with self._sessions.begin() as session:
            row = (
                await session.execute(
                    select(ExecutionRow.status, ExecutionRow.track)
                    .where(ExecutionRow.id == execution_id)
                    .with_for_update()
                )
            ).one_or_none()
            if row is None:
                raise NotFound("execution", execution_id)
            status = row.status
            if row.track is not track:
                return None
            takeable = {_S.QUEUED, *ACTIVE} if takeover else {_S.QUEUED}
            if status not in takeable:
                return None
            values = insert(ExecutionClaimRow).values(
                execution_id=execution_id,
                worker_id=worker_id,
                generation=1,
                expires_at=_ttl(ttl_s),
            )
            stmt = values.on_conflict_do_update(
                index_elements=[ExecutionClaimRow.execution_id],
                set_={
                    "worker_id": worker_id,
                    "generation": ExecutionClaimRow.generation + 1,
                    "claimed_at": func.now(),
                    "heartbeat_at": func.now(),
                    "expires_at": _ttl(ttl_s),
                },
                where=(ExecutionClaimRow.worker_id == RELEASED)
                | (ExecutionClaimRow.worker_id == worker_id)
                | (ExecutionClaimRow.expires_at < func.now()),
            ).returning(ExecutionClaimRow.generation, ExecutionClaimRow.expires_at)
            lease = (await session.execute(stmt)).one_or_none()
            if lease is None:
                return None
            if status is not _S.QUEUED:
                # A new attempt of an execution whose worker is gone: back through `queued`,
                # so the move to `running` counts the attempt like any other delivery.
                await self._executions.transition(
                    execution_id, _S.QUEUED, expected=ACTIVE, session=session
                )
            record = await self._executions.transition(
                execution_id, _S.RUNNING, expected={_S.QUEUED}, session=session
            )
        return Claim(execution_id, worker_id, lease.generation, lease.expires_at), record

    async def renew(
        self, worker_id: str, held: Sequence[tuple[str, int]], ttl_s: float
    ) -> set[str]:
        """Extend every lease this worker still holds; the ids returned are the ones kept."""
        if not held:
            return set()
        async with self._sessions.begin() as session:
            rows = await session.scalars(
                update(ExecutionClaimRow)
                .where(
                    ExecutionClaimRow.worker_id == worker_id,
                    tuple_(ExecutionClaimRow.execution_id, ExecutionClaimRow.generation).in_(
                        list(held)
                    ),
                )
                .values(heartbeat_at=func.now(), expires_at=_ttl(ttl_s))
                .returning(ExecutionClaimRow.execution_id)
            )
            return set(rows)

    async def _hold(self, session: AsyncSession, claim: Claim) -> bool:
        """Lock the claim row and tell whether this worker still holds it."""
        held = await session.scalar(
            select(ExecutionClaimRow.generation)
            .where(
                ExecutionClaimRow.execution_id == claim.execution_id,
                ExecutionClaimRow.worker_id == claim.worker_id,
                ExecutionClaimRow.generation == claim.generation,
            )
            .with_for_update()
        )
        return held is not None

    async def transition(
        self,
        claim: Claim,
        target: ExecutionStatus,
        *,
        expected: Collection[ExecutionStatus] = ACTIVE,
        release: bool = False,
        **fields: Any,
    ) -> ExecutionRecord | None:
        """A fenced status move: applied only while this worker holds the claim, else None.

        One statement when the move applies (the run's own moves); a refused one is explained
        by the general transaction below (IllegalTransition, UnexpectedStatus)."""
        moved: ExecutionRecord | bool = True
        if fields.keys() <= _ONE_STATEMENT_FIELDS:
            async with driver(self._sessions) as connection:
                moved = await move_held(
                    connection,
                    claim,
                    target,
                    sources=transition_sources(target, expected),
                    release=release,
                    outputs=fields.get("outputs"),
                    error_message=fields.get("error_message"),
                    error_node_id=fields.get("error_node_id"),
                    next_event_index=fields.get("next_event_index"),
                )
        if isinstance(moved, ExecutionRecord):
            return moved
        if not moved:
            return None
        async with self._sessions.begin() as session:
            if not await self._hold(session, claim):
                return None
            record = await self._executions.transition(
                claim.execution_id, target, expected=expected, session=session, **fields
            )
            if release:
                await session.execute(
                    update(ExecutionClaimRow)
                    .where(ExecutionClaimRow.execution_id == claim.execution_id)
                    .values(worker_id=RELEASED, expires_at=func.now())
                )
        return record

    async def hand_back(self, claim: Claim) -> ExecutionRecord | None:
        """Give an unfinished run back (its worker is shutting down), fenced: the execution is
        `queued` again, the lease released and a `handover` audit row written in one commit, so
        the next run is not counted as a failed attempt (domain/attempts.py). None when this
        worker no longer holds the claim (the run ended, or recovery took it)."""
        async with self._sessions.begin() as session:
            if not await self._hold(session, claim):
                return None
            record = await self._executions.transition(
                claim.execution_id, _S.QUEUED, expected=ACTIVE, session=session
            )
            await session.execute(
                update(ExecutionClaimRow)
                .where(ExecutionClaimRow.execution_id == claim.execution_id)
                .values(worker_id=RELEASED, expires_at=func.now())
            )
            session.add(
                audit_row(
                    Recovery(
                        claim.execution_id,
                        record.track,
                        Reason.HANDOVER,
                        record.attempt,
                        claim.worker_id,
                        f"attempt {record.attempt} handed over by worker {claim.worker_id}, "
                        "which was shutting down",
                    )
                )
            )
        return record

    async def held_by(self, worker_id: str) -> list[str]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(ExecutionClaimRow.execution_id).where(
                    ExecutionClaimRow.worker_id == worker_id
                )
            )
            return list(rows)

    async def expire_now(self, execution_id: str) -> None:
        """Make a lease run out at once (operators and tests: simulate a silent worker)."""
        async with self._sessions.begin() as session:
            await session.execute(
                update(ExecutionClaimRow)
                .where(ExecutionClaimRow.execution_id == execution_id)
                .values(expires_at=func.now() - text("interval '1 second'"))
            )
