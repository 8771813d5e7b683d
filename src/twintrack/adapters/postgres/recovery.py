"""Recovery's ports on PostgreSQL: the recovery store, the audit trail, the reroute store.

Every query recovery asks and every row it changes is here (core/recovery_ports.py says what
each means). A method given a `LockedExecution` runs in that lock's transaction (its
`LockedRow.session`), so what it writes commits with the rest of the locked step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import (
    ColumnElement,
    TextClause,
    and_,
    exists,
    extract,
    func,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from twintrack.adapters.postgres.executions import LockedRow, PostgresExecutionStore
from twintrack.adapters.postgres.stops import stop_command_exists
from twintrack.adapters.postgres.tables import (
    NON_TERMINAL_SQL,
    ExecutionClaimRow,
    ExecutionRecoveryRow,
    ExecutionRow,
)
from twintrack.core.records import ExecutionRecord, ExpiredClaim
from twintrack.core.recovery_ports import (
    HoldBack,
    LastClaim,
    Orphan,
    Reason,
    Recovery,
    TrackCount,
    Unstarted,
    Untouched,
)
from twintrack.core.stores import ACTIVE, LockedExecution
from twintrack.domain.attempts import HANDOVER
from twintrack.domain.execution import TERMINAL_STATUSES, EventsBackend, ExecutionStatus, Track

_S = ExecutionStatus
RELEASED = ""  # worker_id of a claim nobody holds (released, or taken back by recovery)
UNSTARTED = (_S.CREATED, _S.QUEUED)


def _session(row: LockedExecution) -> AsyncSession:
    """The transaction of a lock taken by the Postgres PostgresExecutionStore."""
    if not isinstance(row, LockedRow):
        raise TypeError(f"not a Postgres row lock: {type(row).__name__}")
    return row.session


def _seconds_ago(seconds: float, name: str = "secs") -> Any:
    return func.now() - text(f"make_interval(secs => :{name})").bindparams(**{name: seconds})


def audit_row(entry: Recovery) -> ExecutionRecoveryRow:
    """The one mapping of an audit entry to its row (claims' handover writes one too)."""
    return ExecutionRecoveryRow(
        execution_id=entry.execution_id,
        track=entry.track,
        reason=entry.reason.value,
        previous_worker_id=entry.worker_id or None,
        attempt=entry.attempt,
        detail=entry.detail,
    )


class PostgresRecoveryAudit:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def write(
        self, entries: Sequence[Recovery], *, within: LockedExecution | None = None
    ) -> None:
        if within is not None:
            session = _session(within)
            session.add_all([audit_row(e) for e in entries])
            await session.flush()  # a refused row fails here, before anything else is sent
            return
        async with self._sessions.begin() as session:
            session.add_all([audit_row(e) for e in entries])

    async def handovers(self, row: LockedExecution) -> int:
        count = await _session(row).scalar(
            select(func.count()).where(
                ExecutionRecoveryRow.execution_id == row.record.id,
                ExecutionRecoveryRow.reason == HANDOVER,
            )
        )
        return int(count or 0)

    async def last_failure(self, row: LockedExecution) -> str | None:
        detail: str | None = await _session(row).scalar(
            select(ExecutionRecoveryRow.detail)
            .where(
                ExecutionRecoveryRow.execution_id == row.record.id,
                ExecutionRecoveryRow.attempt == row.record.attempt,
                ExecutionRecoveryRow.reason != HANDOVER,
                ExecutionRecoveryRow.detail.is_not(None),
            )
            .order_by(ExecutionRecoveryRow.id.desc())
            .limit(1)
        )
        return detail

    async def left_dbos(self, row: LockedExecution) -> bool:
        left = await _session(row).scalar(
            select(_left_dbos()).where(ExecutionRow.id == row.record.id)
        )
        return bool(left)


class PostgresRecoveryStore:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], executions: PostgresExecutionStore
    ):
        self._sessions = sessions
        self._executions = executions

    async def expired_claims(self, limit: int) -> list[ExpiredClaim]:
        async with self._sessions() as session:
            rows = await session.execute(
                select(
                    ExecutionClaimRow.execution_id,
                    ExecutionClaimRow.worker_id,
                    ExecutionClaimRow.generation,
                    ExecutionRow.status,
                    ExecutionRow.attempt,
                )
                .join(ExecutionRow, ExecutionRow.id == ExecutionClaimRow.execution_id)
                .where(
                    ExecutionClaimRow.expires_at < func.now(),
                    ExecutionClaimRow.worker_id != RELEASED,
                    ExecutionRow.status.in_(ACTIVE),
                    # DBOS-track runs are taken over by their workflow's re-run
                    ExecutionRow.track == Track.KAFKA,
                )
                .order_by(ExecutionClaimRow.expires_at)
                .limit(limit)
            )
            return [ExpiredClaim(*row) for row in rows]

    @asynccontextmanager
    async def take_back(self, expired: ExpiredClaim) -> AsyncIterator[LockedExecution | None]:
        # The claim first, then the execution: the order a fenced worker write takes them in.
        async with self._sessions.begin() as session:
            taken = await session.execute(
                update(ExecutionClaimRow)
                .where(
                    and_(
                        ExecutionClaimRow.execution_id == expired.execution_id,
                        ExecutionClaimRow.worker_id == expired.worker_id,
                        ExecutionClaimRow.generation == expired.generation,
                        ExecutionClaimRow.expires_at < func.now(),
                    )
                )
                .values(worker_id=RELEASED)
                .returning(ExecutionClaimRow.execution_id)
            )
            if taken.first() is None:
                yield None
                return
            row = await session.scalar(
                select(ExecutionRow)
                .where(ExecutionRow.id == expired.execution_id)
                .with_for_update()
            )
            assert row is not None  # the claim row references it
            yield LockedRow(self._executions, session, ExecutionRecord.model_validate(row))

    async def last_claim(self, row: LockedExecution) -> LastClaim | None:
        claim = (
            await _session(row).execute(
                select(
                    ExecutionClaimRow.worker_id,
                    (ExecutionClaimRow.expires_at < func.now()).label("expired"),
                )
                .where(ExecutionClaimRow.execution_id == row.record.id)
                .with_for_update()
            )
        ).one_or_none()
        if claim is None:
            return None
        return LastClaim(holder=claim.worker_id or None, expired=bool(claim.expired))

    async def release_claim(self, row: LockedExecution) -> None:
        await _session(row).execute(
            update(ExecutionClaimRow)
            .where(ExecutionClaimRow.execution_id == row.record.id)
            .values(worker_id=RELEASED, expires_at=func.now())
        )

    async def touch_untouched(
        self,
        *,
        track: Track,
        statuses: Collection[ExecutionStatus],
        older_than_s: float,
        limit: int,
    ) -> list[Untouched]:
        live_claim = exists().where(
            ExecutionClaimRow.execution_id == ExecutionRow.id,
            ExecutionClaimRow.worker_id != RELEASED,
            ExecutionClaimRow.expires_at > func.now(),
        )
        stale = (
            select(ExecutionRow.id)
            .where(
                ExecutionRow.status.in_(list(statuses)),
                ExecutionRow.track == track,
                ExecutionRow.updated_at < _seconds_ago(older_than_s),
                ~live_claim,
            )
            .order_by(ExecutionRow.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("stale")  # a CTE runs once: a LIMIT in `IN (subquery)` may not hold
        )
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(ExecutionRow)
                .where(ExecutionRow.id == stale.c.id)
                .values(updated_at=func.now())
                .returning(ExecutionRow.id, ExecutionRow.events_backend, ExecutionRow.attempt)
                .execution_options(synchronize_session=False)
            )
            return [Untouched(*r) for r in result.all()]

    async def never_started_roots(self, older_than_s: float, limit: int) -> list[str]:
        async with self._sessions() as session:
            return list(
                await session.scalars(
                    select(ExecutionRow.id)
                    .where(
                        ExecutionRow.status == _S.CREATED,
                        ExecutionRow.parent_id.is_(None),
                        ExecutionRow.created_at < _seconds_ago(older_than_s),
                    )
                    .limit(limit)
                )
            )

    async def orphan_children(self, grace_s: float, limit: int) -> list[Orphan]:
        parent = aliased(ExecutionRow)
        settled = parent.finished_at < _seconds_ago(grace_s, "grace")
        child = ExecutionRow
        never_started = (child.status == _S.CREATED) & (
            parent.id.is_(None) | (parent.status.in_(TERMINAL_STATUSES) & settled)
        )
        not_told = (
            child.status.notin_(TERMINAL_STATUSES)
            & (parent.status == _S.STOPPED)
            & settled
            & ~stop_command_exists()
        )
        query = (
            select(child.id, child.track, child.parent_id, parent.status)
            .outerjoin(parent, parent.id == child.parent_id)
            .where(child.parent_id.is_not(None), never_started | not_told)
            .order_by(child.created_at)
            .limit(limit)
        )
        async with self._sessions() as session:
            rows = await session.execute(query)
            return [Orphan(r[0], r[1], str(r[2]), r[3]) for r in rows]

    async def attempts(self, execution_ids: Collection[str]) -> dict[str, tuple[Track, int]]:
        async with self._sessions() as session:
            rows = await session.execute(
                select(ExecutionRow.id, ExecutionRow.track, ExecutionRow.attempt).where(
                    ExecutionRow.id.in_(list(execution_ids))
                )
            )
            return {r.id: (r.track, r.attempt) for r in rows}


def _left_dbos() -> ColumnElement[bool]:
    """The execution was rerouted off DBOS at some point (an audit row says so)."""
    return exists().where(
        ExecutionRecoveryRow.execution_id == ExecutionRow.id,
        ExecutionRecoveryRow.reason == Reason.REROUTED.value,
        ExecutionRecoveryRow.track == Track.KAFKA,
    )


def holds_back(rule: HoldBack) -> ColumnElement[bool]:
    if rule is HoldBack.LEFT_DBOS:
        return _left_dbos()
    return ExecutionRow.events_backend == EventsBackend.DBOS


def _unstarted_on(track: Track, owner_id: str | None) -> list[ColumnElement[bool] | TextClause]:
    # The index predicate, repeated literally: the planner proves the partial index applies
    # even when the rest arrives as bound parameters (generic plans).
    where: list[ColumnElement[bool] | TextClause] = [
        text(NON_TERMINAL_SQL),
        ExecutionRow.status.in_(UNSTARTED),
        ExecutionRow.track == track,
        ExecutionRow.shadow_of.is_(None),  # a shadow belongs on the other track: never moved
    ]
    if owner_id is not None:
        where.append(ExecutionRow.owner_id == owner_id)
    return where


class PostgresRerouteStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def counts(self, *, include_finished: bool) -> list[TrackCount]:
        """The unfinished counts and ages come from the partial index on unfinished executions
        (the query repeats its predicate literally, so the planner can use it)."""
        age = extract("epoch", func.now() - func.min(ExecutionRow.created_at))
        out: list[TrackCount] = []
        async with self._sessions() as session:
            unfinished = await session.execute(
                select(ExecutionRow.track, ExecutionRow.status, func.count(), age)
                .where(text(NON_TERMINAL_SQL), ExecutionRow.shadow_of.is_(None))
                .group_by(ExecutionRow.track, ExecutionRow.status)
            )
            out += [TrackCount(t, s, n, float(seconds)) for t, s, n, seconds in unfinished]
            if include_finished:
                finished = await session.execute(
                    select(ExecutionRow.track, ExecutionRow.status, func.count())
                    .where(text(f"NOT ({NON_TERMINAL_SQL})"), ExecutionRow.shadow_of.is_(None))
                    .group_by(ExecutionRow.track, ExecutionRow.status)
                )
                out += [TrackCount(t, s, n) for t, s, n in finished]
        return out

    async def unstarted(
        self,
        track: Track,
        *,
        owner_id: str | None,
        limit: int | None,
        excluding: HoldBack | None,
    ) -> list[Unstarted]:
        query = (
            select(ExecutionRow.id, ExecutionRow.status, ExecutionRow.events_backend)
            .where(*_unstarted_on(track, owner_id))
            .order_by(ExecutionRow.created_at, ExecutionRow.id)
        )
        if excluding is not None:
            query = query.where(~holds_back(excluding))
        if limit is not None:
            query = query.limit(limit)
        async with self._sessions() as session:
            return [Unstarted(*r) for r in (await session.execute(query)).all()]

    async def held_back(self, track: Track, *, owner_id: str | None, rule: HoldBack) -> int:
        async with self._sessions() as session:
            held = await session.scalar(
                select(func.count()).where(*_unstarted_on(track, owner_id), holds_back(rule))
            )
        return int(held or 0)

    async def move(self, row: LockedExecution, to: Track) -> ExecutionRecord:
        moved = await _session(row).scalar(
            update(ExecutionRow)
            .where(ExecutionRow.id == row.record.id)
            .values(track=to, updated_at=func.now())
            .returning(ExecutionRow)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        assert moved is not None  # the row is locked
        return ExecutionRecord.model_validate(moved)
