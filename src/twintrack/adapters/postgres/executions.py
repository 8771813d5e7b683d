"""PostgresExecutionStore: the `executions` table, the one source of truth both tracks read and
write.

Every status change goes through `transition`, a single conditional UPDATE: the state machine of
`domain.execution` is enforced in the WHERE clause, so two racing writers cannot both move an
execution out of a state (exactly one wins; the other gets IllegalTransition).
"""

from __future__ import annotations

import builtins
import time
from collections.abc import AsyncIterator, Collection, Iterable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import structlog
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Executable,
    Interval,
    Text,
    any_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres import execution_statements as statements
from twintrack.adapters.postgres.db import DriverConnection, driver, driver_in, one_statement
from twintrack.adapters.postgres.pagination import (
    check_limit,
    decode_tree_cursor,
    encode_tree_cursor,
    newest_first,
    to_page,
)
from twintrack.adapters.postgres.stops import stop_reason
from twintrack.adapters.postgres.tables import ExecutionRow, IdempotencyKeyRow
from twintrack.core.errors import AlreadyExists, NotFound, UnexpectedStatus
from twintrack.core.records import ExecutionRecord, KeyReservation, Page
from twintrack.domain.execution import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATUSES,
    EventsBackend,
    ExecutionOptions,
    ExecutionStatus,
    IllegalTransition,
    Track,
    TriggerEvent,
)
from twintrack.domain.ids import new_execution_id
from twintrack.domain.limits import OwnerLimits

log = structlog.get_logger(__name__)
_S = ExecutionStatus
_UNIQUE_VIOLATION = "23505"
_FOREIGN_KEY_VIOLATION = "23503"
OWNER_LOCK_WAIT_S = 5.0
# A lost race re-reads the status and retries; more rounds than this means a livelock bug.
_MAX_TRANSITION_ROUNDS = 8
# Transaction-scoped advisory locks (two-key form, so they never meet the one-key leader locks).
_TREE_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('twintrack_tree'), hashtext(:root_id))")
# Expired idempotency keys deleted per new key: more than expire per key, so the table stays
# about one TTL's worth of keys, and no delete ever runs long.
_EXPIRED_KEYS_PER_RESERVATION = 100
#: the lock wait's bound, the owner's advisory lock, the count, and the admission if under the
#: cap (migration 0013): one round trip, the count's snapshot taken once the lock is held. It
#: counts RUNNING_STATUSES, non-shadow, plus admitted starts not yet committed
#: (tests/integration/postgres/test_owner_limits.py holds the two together).
_OWNER_ADMIT_SQL = "SELECT twintrack_owner_admit($1, $2, $3, $4, $5)"
_LOCK_ROW = text(f"{statements.GET_SQL.replace('$1', ':id')} FOR UPDATE").columns(
    *ExecutionRow.__table__.columns
)
_LOCK_OWNED_ROW = text(
    f"{statements.GET_OWNED_SQL.replace('$1', ':id').replace('$2', ':owner')} FOR UPDATE"
).columns(*ExecutionRow.__table__.columns)
_FORGET_ADMISSION_SQL = "DELETE FROM owner_admissions WHERE execution_id = $1"
#: How long an admitted start may take to commit before its admission lapses (its process died
#: in between). Far above any start's publish; a start slower than half of it counts again in
#: its own transaction before it commits, so the limit stays exact even then.
ADMISSION_TTL_S = 120.0


def _record(row: ExecutionRow) -> ExecutionRecord:
    return ExecutionRecord.model_validate(row)


def transition_sources(
    target: ExecutionStatus, expected: Collection[ExecutionStatus] | None
) -> list[_S]:
    """The statuses an execution may be in for the move to `target` to be applied."""
    allowed = [s for s in ExecutionStatus if target in ALLOWED_TRANSITIONS[s]]
    return allowed if expected is None else [s for s in allowed if s in expected]


def _owned(query_filter: ColumnElement[bool], owner_id: str | None) -> list[ColumnElement[bool]]:
    """`query_filter` scoped to the owner's executions; a shadow run is nobody's."""
    if owner_id is None:
        return [query_filter]
    return [query_filter, ExecutionRow.owner_id == owner_id, ExecutionRow.shadow_of.is_(None)]


class PostgresExecutionStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._single = one_statement(sessions)  # work of one statement: one round trip

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """For the other Postgres adapters that query beside the store (not part of the port)."""
        return self._sessions

    async def create(
        self,
        *,
        owner_id: str,
        flow_id: str,
        flow_version: int,
        track: Track,
        events_backend: EventsBackend,
        options: ExecutionOptions | None = None,
        trigger_events: Iterable[TriggerEvent] = (),
        parent_id: str | None = None,
        execution_id: str | None = None,
        next_event_index: int = 0,
        limits: OwnerLimits | None = None,
        shadow_of: str | None = None,
        fallback_reason: str | None = None,
    ) -> ExecutionRecord:
        """Insert an execution in status `created`.

        A child (`parent_id` set) takes its root and depth from its parent, which must belong to
        the same owner. The flow version must exist: the execution pins it (NotFound otherwise).
        AlreadyExists when `execution_id` is given and taken: a caller that retries a spawn with
        a deterministic id can then read the row instead of making a duplicate.

        With `limits`, a child that would make its tree larger than `MAX_EXECUTIONS_PER_TREE` is
        not inserted (LimitExceeded). Child inserts of one tree take the tree's advisory lock
        and count after inserting, so concurrent spawns (any worker) can never pass the cap.
        """
        execution_id = execution_id or new_execution_id()
        root_id, depth = execution_id, 0
        options = options or ExecutionOptions()
        if parent_id is None:  # one INSERT, atomic by itself, on the driver
            try:
                async with driver(self._sessions) as connection:
                    return await statements.insert_root(
                        connection,
                        execution_id=execution_id,
                        owner_id=owner_id,
                        flow_id=flow_id,
                        flow_version=flow_version,
                        track=track,
                        events_backend=events_backend,
                        options=options,
                        trigger_events=trigger_events,
                        next_event_index=next_event_index,
                        shadow_of=shadow_of,
                        fallback_reason=fallback_reason,
                    )
            except asyncpg.UniqueViolationError as exc:
                raise AlreadyExists("execution", execution_id) from exc
            except asyncpg.ForeignKeyViolationError as exc:
                raise NotFound("flow version", (flow_id, flow_version)) from exc
        # A child also reads its parent and counts its tree, in one transaction.
        async with self._sessions.begin() as session:
            parent = (
                await session.execute(
                    select(ExecutionRow.root_id, ExecutionRow.depth).where(
                        ExecutionRow.id == parent_id, ExecutionRow.owner_id == owner_id
                    )
                )
            ).one_or_none()
            if parent is None:
                raise NotFound("execution", parent_id)
            root_id, depth = parent.root_id, parent.depth + 1
            if limits is not None:
                await session.execute(_TREE_LOCK, {"root_id": root_id})
            insert_row = (
                insert(ExecutionRow)
                .values(
                    id=execution_id,
                    root_id=root_id,
                    parent_id=parent_id,
                    depth=depth,
                    owner_id=owner_id,
                    flow_id=flow_id,
                    flow_version=flow_version,
                    track=track,
                    events_backend=events_backend,
                    status=ExecutionStatus.CREATED,
                    options=options.model_dump(mode="json"),
                    trigger_events=[e.model_dump(mode="json") for e in trigger_events],
                    next_event_index=next_event_index,
                    shadow_of=shadow_of,
                    fallback_reason=fallback_reason,
                )
                .returning(ExecutionRow)
            )
            try:
                row = await session.scalar(insert_row)
            except IntegrityError as exc:
                code = getattr(exc.orig, "sqlstate", None)
                if code == _UNIQUE_VIOLATION:
                    raise AlreadyExists("execution", execution_id) from exc
                if code == _FOREIGN_KEY_VIOLATION:  # the parent was checked above
                    raise NotFound("flow version", (flow_id, flow_version)) from exc
                raise
            assert row is not None
            if parent_id is not None and limits is not None:
                size = await session.scalar(
                    select(func.count()).where(ExecutionRow.root_id == root_id)
                )
                limits.check_tree(int(size or 0), root_id)  # raising rolls the insert back
            return _record(row)

    @staticmethod
    async def admit(
        connection: DriverConnection,
        owner_id: str,
        execution_id: str,
        cap: int,
        *,
        wait_s: float = OWNER_LOCK_WAIT_S,
    ) -> int:
        """Under the owner's advisory lock, count its started, unfinished executions and the
        admitted starts not committed yet; admit `execution_id` if that is under `cap`.

        The lock lasts as long as the transaction `connection` is in: one statement outside
        any (`db.driver`), or the start's own when it must count there (`db.driver_in`). The
        wait for it is bounded (TimeoutError, a 503), so starts stuck behind one that hangs are
        refused instead of queueing up one after the other.
        """
        try:
            taken = await connection.fetchval(
                _OWNER_ADMIT_SQL, owner_id, execution_id, cap, ADMISSION_TTL_S, int(wait_s * 1000)
            )
        except asyncpg.LockNotAvailableError as exc:
            raise TimeoutError(
                f"another start of owner {owner_id} has held its running count for {wait_s:g}s"
            ) from exc
        return int(taken or 0)

    async def get(self, execution_id: str, owner_id: str | None = None) -> ExecutionRecord:
        """The execution; NotFound when missing or owned by someone else than `owner_id`."""
        async with driver(self._sessions) as connection:
            record = await statements.get(connection, execution_id, owner_id)
        if record is None:
            raise NotFound("execution", execution_id)
        return record

    async def fall_back(self, execution_id: str, reason: str) -> ExecutionRecord:
        async with self._sessions.begin() as session:
            row = await session.scalar(
                update(ExecutionRow)
                .where(ExecutionRow.id == execution_id, ExecutionRow.status == _S.CREATED)
                .values(
                    track=Track.KAFKA,
                    events_backend=EventsBackend.KAFKA,
                    fallback_reason=reason,
                    updated_at=func.now(),
                )
                .returning(ExecutionRow)
                .execution_options(synchronize_session=False)
            )
            if row is None:
                current = await session.scalar(
                    select(ExecutionRow.status).where(ExecutionRow.id == execution_id)
                )
                if current is None:
                    raise NotFound("execution", execution_id)
                raise UnexpectedStatus(execution_id, current, _S.CREATED, frozenset([_S.CREATED]))
            return _record(row)

    async def finished_among(self, execution_ids: Collection[str]) -> set[str]:
        """Which of these executions have ended: one primary-key query however many."""
        ids = bindparam("ids", list(execution_ids), type_=ARRAY(Text()))
        query = select(ExecutionRow.id).where(
            ExecutionRow.id == any_(ids), ExecutionRow.status.in_(TERMINAL_STATUSES)
        )
        async with self._sessions() as session:
            return set((await session.scalars(query)).all())

    async def list(
        self,
        owner_id: str,
        flow_id: str | None = None,
        status: ExecutionStatus | None = None,
        track: Track | None = None,
        limit: int = 50,
        cursor: str | None = None,
        *,
        parent_id: str | None = None,
        root_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> Page[ExecutionRecord]:
        """The owner's executions, newest first, optionally filtered (see the port)."""
        query = select(ExecutionRow).where(*_owned(ExecutionRow.owner_id == owner_id, owner_id))
        if flow_id is not None:
            query = query.where(ExecutionRow.flow_id == flow_id)
        if status is not None:
            query = query.where(ExecutionRow.status == status)
        if track is not None:
            query = query.where(ExecutionRow.track == track)
        if parent_id is not None:
            query = query.where(ExecutionRow.parent_id == parent_id)
        if root_id is not None:
            query = query.where(ExecutionRow.root_id == root_id)
        if created_after is not None:
            query = query.where(ExecutionRow.created_at >= created_after)
        if created_before is not None:
            query = query.where(ExecutionRow.created_at < created_before)
        query = newest_first(query, ExecutionRow.created_at, ExecutionRow.id, limit, cursor)
        async with self._sessions() as session:
            rows = (await session.scalars(query)).all()
        return to_page(rows, limit, _record, lambda r: (r.created_at, r.id))

    async def children(
        self, parent_id: str, owner_id: str | None = None
    ) -> builtins.list[ExecutionRecord]:
        """Direct children, oldest first."""
        query = (
            select(ExecutionRow)
            .where(*_owned(ExecutionRow.parent_id == parent_id, owner_id))
            .order_by(ExecutionRow.created_at, ExecutionRow.id)
        )
        async with self._sessions() as session:
            return [_record(r) for r in (await session.scalars(query)).all()]

    async def tree(
        self, execution_id: str, owner_id: str | None = None
    ) -> builtins.list[ExecutionRecord]:
        """The execution and all its descendants, by depth then age; NotFound if not visible."""
        start = select(ExecutionRow.id).where(*_owned(ExecutionRow.id == execution_id, owner_id))
        tree = start.cte("tree", recursive=True)
        tree = tree.union_all(select(ExecutionRow.id).where(ExecutionRow.parent_id == tree.c.id))
        query = (
            select(ExecutionRow)
            .join(tree, ExecutionRow.id == tree.c.id)
            .order_by(ExecutionRow.depth, ExecutionRow.created_at, ExecutionRow.id)
        )
        async with self._sessions() as session:
            rows = (await session.scalars(query)).all()
        if not rows:
            raise NotFound("execution", execution_id)
        return [_record(r) for r in rows]

    async def tree_page(
        self,
        execution_id: str,
        owner_id: str | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[Page[ExecutionRecord], dict[ExecutionStatus, int]]:
        """One page of the execution's subtree (by depth, then age) and the whole subtree's
        member count by status (for the aggregate status); NotFound if not visible.

        Keyset on (depth, created_at, id): a member added while a client pages lands after
        the page it is on, never inside a page already handed out twice.
        """
        start = select(ExecutionRow.id).where(*_owned(ExecutionRow.id == execution_id, owner_id))
        tree = start.cte("tree", recursive=True)
        tree = tree.union_all(select(ExecutionRow.id).where(ExecutionRow.parent_id == tree.c.id))
        key = tuple_(ExecutionRow.depth, ExecutionRow.created_at, ExecutionRow.id)
        page_query = select(ExecutionRow).join(tree, ExecutionRow.id == tree.c.id)
        if cursor is not None:
            page_query = page_query.where(key > tuple_(*decode_tree_cursor(cursor)))
        page_query = page_query.order_by(
            ExecutionRow.depth, ExecutionRow.created_at, ExecutionRow.id
        ).limit(check_limit(limit) + 1)
        counts_query = (
            select(ExecutionRow.status, func.count())
            .join(tree, ExecutionRow.id == tree.c.id)
            .group_by(ExecutionRow.status)
        )
        async with self._sessions.begin() as session:
            # One snapshot for both, so the page and the aggregate agree.
            await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            counts = {status: int(n) for status, n in (await session.execute(counts_query)).all()}
            rows = (await session.scalars(page_query)).all() if counts else []
        if not counts:
            raise NotFound("execution", execution_id)
        more = len(rows) > limit
        kept = rows[:limit]
        next_cursor = (
            encode_tree_cursor(kept[-1].depth, kept[-1].created_at, kept[-1].id) if more else None
        )
        return Page(items=[_record(r) for r in kept], next_cursor=next_cursor), counts

    async def transition(
        self,
        execution_id: str,
        target: ExecutionStatus,
        *,
        expected: Collection[ExecutionStatus] | None = None,
        owner_id: str | None = None,
        outputs: dict[str, Any] | None = None,
        error_message: str | None = None,
        error_node_id: str | None = None,
        next_event_index: int | None = None,
        session: AsyncSession | None = None,
    ) -> ExecutionRecord:
        """Move the execution to `target` atomically and return the updated row.

        With `session` (from `locked`), the move joins that transaction instead of its own.

        Raises IllegalTransition when the state machine refuses the move from the current status,
        UnexpectedStatus (a subclass) when the current status is not in `expected`, NotFound when
        the execution is missing or not `owner_id`'s.

        Timestamps record the first time: `queued_at` and `started_at` are kept on a re-run;
        `finished_at` is set by the move to a terminal status. `attempt` counts the moves from
        `queued` to `running` (each delivery to a worker). `next_event_index` never goes down.
        """
        sources = transition_sources(target, expected)

        async def apply_or_refuse(
            connection: DriverConnection,
        ) -> ExecutionRecord | ExecutionStatus | None:
            # The new row, else the status that refused it (None: no row). If the status
            # changed between the UPDATE and the read to one the move is allowed from (each
            # takes its own snapshot under READ COMMITTED), the UPDATE is simply tried again.
            current: ExecutionStatus | None = None
            for _ in range(_MAX_TRANSITION_ROUNDS):
                moved = await statements.move(
                    connection,
                    execution_id,
                    target,
                    sources=sources,
                    owner_id=owner_id,
                    outputs=outputs,
                    error_message=error_message,
                    error_node_id=error_node_id,
                    next_event_index=next_event_index,
                )
                if moved is not None:
                    return moved
                current = await statements.status(connection, execution_id, owner_id)
                if current is None or current not in sources:
                    return current
            return current

        if session is not None:
            outcome = await apply_or_refuse(await driver_in(session))
        else:
            async with driver(self._sessions) as connection:
                outcome = await apply_or_refuse(connection)
        if isinstance(outcome, ExecutionRecord):
            return outcome
        if outcome is None:
            raise NotFound("execution", execution_id)
        if expected is not None and outcome not in expected:
            raise UnexpectedStatus(execution_id, outcome, target, frozenset(expected))
        raise IllegalTransition(execution_id, outcome, target)

    @asynccontextmanager
    async def locked(
        self, execution_id: str, owner_id: str | None = None
    ) -> AsyncIterator[LockedRow]:
        """Hold the execution's row lock for one transaction (commit on normal exit).

        Writers that must publish an event and move the status as one step (start, stop before
        a worker has it, start timeout) do both under this lock, so they never interleave.
        """
        async with self._sessions.begin() as session:
            # Through SQLAlchemy (it begins the transaction), prebuilt: no ORM statement.
            if owner_id is None:
                found = await session.execute(_LOCK_ROW, {"id": execution_id})
            else:
                found = await session.execute(
                    _LOCK_OWNED_ROW, {"id": execution_id, "owner": owner_id}
                )
            row = found.one_or_none()
            if row is None:
                raise NotFound("execution", execution_id)
            held = LockedRow(self, session, ExecutionRecord.model_validate(dict(row._mapping)))
            try:
                yield held
            finally:
                await held.withdraw_admission()

    async def advance_event_index(self, execution_id: str, next_index: int) -> int:
        """Raise `next_event_index` to at least `next_index` (never lowers it); return its value.

        Idempotent, so an at-least-once writer can record the index after each flushed batch.
        """
        async with self._single() as session:
            value: int | None = await session.scalar(
                update(ExecutionRow)
                .where(ExecutionRow.id == execution_id)
                .values(
                    next_event_index=func.greatest(ExecutionRow.next_event_index, next_index),
                    updated_at=func.now(),
                )
                .returning(ExecutionRow.next_event_index)
            )
        if value is None:
            raise NotFound("execution", execution_id)
        return value

    async def stop_reason(self, execution_id: str) -> str | None:
        """See `core.stores.ExecutionStore.stop_reason`."""
        return await stop_reason(self._single, execution_id)

    # -- idempotency keys ------------------------------------------------------------------

    async def reserve_key(
        self, owner_id: str, key: str, request_hash: str, execution_id: str, ttl_s: float
    ) -> KeyReservation:
        """Take `key` for `execution_id`, unless a request within `ttl_s` took it already.

        One INSERT ... ON CONFLICT decides: of concurrent callers with one key exactly one
        reserves it (an expired row is taken over in place) and every other one reads the
        winner's row, whose insert it waited for. Expired keys are cleaned up here too.
        """
        ttl = bindparam("ttl", timedelta(seconds=ttl_s), type_=Interval())
        row = pg_insert(IdempotencyKeyRow).values(
            owner_id=owner_id, key=key, request_hash=request_hash, execution_id=execution_id
        )
        claim = row.on_conflict_do_update(
            index_elements=[IdempotencyKeyRow.owner_id, IdempotencyKeyRow.key],
            set_={
                "request_hash": row.excluded.request_hash,
                "execution_id": row.excluded.execution_id,
                "created_at": func.now(),
            },
            where=IdempotencyKeyRow.created_at < func.now() - ttl,
        ).returning(IdempotencyKeyRow.execution_id)
        async with self._sessions.begin() as session:
            if await session.scalar(claim) is not None:
                await session.execute(_delete_expired_keys(ttl))
                return KeyReservation(execution_id, request_hash, reserved=True)
            held = (
                await session.execute(
                    select(IdempotencyKeyRow.execution_id, IdempotencyKeyRow.request_hash).where(
                        IdempotencyKeyRow.owner_id == owner_id, IdempotencyKeyRow.key == key
                    )
                )
            ).one()
        return KeyReservation(held.execution_id, held.request_hash, reserved=False)

    async def release_key(self, owner_id: str, key: str, execution_id: str) -> None:
        """Free a key whose create failed before its execution existed, so the caller may
        retry it (a key whose execution was made stays: retries must find that one)."""
        async with self._sessions.begin() as session:
            await session.execute(
                delete(IdempotencyKeyRow).where(
                    IdempotencyKeyRow.owner_id == owner_id,
                    IdempotencyKeyRow.key == key,
                    IdempotencyKeyRow.execution_id == execution_id,
                    ~exists().where(ExecutionRow.id == execution_id),
                )
            )


def _delete_expired_keys(ttl: Any) -> Executable:
    """A bounded batch of expired keys, skipping rows another transaction is deciding on."""
    expired = (
        select(IdempotencyKeyRow.owner_id, IdempotencyKeyRow.key)
        .where(IdempotencyKeyRow.created_at < func.now() - ttl)
        .limit(_EXPIRED_KEYS_PER_RESERVATION)
        .with_for_update(skip_locked=True)
    )
    return delete(IdempotencyKeyRow).where(
        tuple_(IdempotencyKeyRow.owner_id, IdempotencyKeyRow.key).in_(expired.scalar_subquery())
    )


class LockedRow:
    """One execution under its row lock, within one transaction (`PostgresExecutionStore.locked`).

    Everything done through it commits together when the `locked` block ends, or not at all.
    `session` is for the other Postgres adapters that join the transaction (claims, audit).
    """

    def __init__(
        self, store: PostgresExecutionStore, session: AsyncSession, record: ExecutionRecord
    ):
        self._store = store
        self.session = session
        self.record = record
        # (cap, monotonic time) of this start's admission, until this transaction settles it
        self._admitted: tuple[int, float] | None = None

    async def transition(
        self,
        target: ExecutionStatus,
        *,
        outputs: dict[str, Any] | None = None,
        error_message: str | None = None,
        error_node_id: str | None = None,
        next_event_index: int | None = None,
    ) -> ExecutionRecord:
        """`PostgresExecutionStore.transition` in this transaction; the handle sees the new row.

        A start's admission is settled in the same transaction: deleted as its `queued` commits,
        so every other count sees this execution exactly once.
        """
        if self._admitted is not None:
            await self._settle_admission()
        self.record = await self._store.transition(
            self.record.id,
            target,
            session=self.session,
            outputs=outputs,
            error_message=error_message,
            error_node_id=error_node_id,
            next_event_index=next_event_index,
        )
        return self.record

    async def remember_trace(self, traceparent: str) -> None:
        await self.session.execute(
            update(ExecutionRow)
            .where(ExecutionRow.id == self.record.id)
            .values(traceparent=traceparent)
        )
        self.record = self.record.model_copy(update={"traceparent": traceparent})

    async def admit_running(self, cap: int, *, wait_s: float = OWNER_LOCK_WAIT_S) -> int:
        """See `core.stores.LockedExecution.admit_running`. The owner's lock is held for one
        statement on a connection of its own, not through this transaction's publish: an
        owner's starts no longer run one at a time."""
        async with driver(self._store._sessions) as connection:
            taken = await self._store.admit(
                connection, self.record.owner_id, self.record.id, cap, wait_s=wait_s
            )
        if taken < cap:
            self._admitted = (cap, time.monotonic())
        return taken

    async def _settle_admission(self) -> None:
        assert self._admitted is not None
        cap, at = self._admitted
        connection = await driver_in(self.session)
        if time.monotonic() - at > ADMISSION_TTL_S / 2:
            # So slow its admission may lapse before this commits: count again, holding the
            # owner's lock until this transaction commits (the exact, serial way).
            taken = await self._store.admit(connection, self.record.owner_id, self.record.id, cap)
            OwnerLimits(max_running_executions_per_owner=cap).check_running(
                taken, self.record.owner_id
            )
        await connection.execute(_FORGET_ADMISSION_SQL, self.record.id)
        self._admitted = None

    async def withdraw_admission(self) -> None:
        """A start that admitted itself and did not commit (refused, failed, rolled back) gives
        its slot back now rather than when it lapses."""
        if self._admitted is None:
            return
        self._admitted = None
        try:
            async with driver(self._store._sessions) as connection:
                await connection.execute(_FORGET_ADMISSION_SQL, self.record.id)
        except Exception as exc:  # it lapses by itself (ADMISSION_TTL_S)
            log.warning("could not withdraw a start's admission", error=repr(exc))
