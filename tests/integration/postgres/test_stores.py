"""Stores against a real PostgreSQL: the behaviour the API, the engine and both tracks rely on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres import (
    AlreadyExists,
    InvalidCursor,
    NotFound,
    PostgresCounterStore,
    PostgresExecutionStore,
    PostgresFlowStore,
    PostgresKeyStore,
    UnexpectedStatus,
)
from twintrack.adapters.postgres.db import create_engine, split_libpq_params, to_async_url
from twintrack.core.records import ExecutionRecord, Page
from twintrack.domain.execution import (
    EventsBackend,
    ExecutionOptions,
    ExecutionStatus,
    IllegalTransition,
    Track,
    TriggerEvent,
)
from twintrack.nodes.base import Counters

pytestmark = pytest.mark.integration

S = ExecutionStatus
T = TypeVar("T")
Sessions = async_sessionmaker[AsyncSession]

ALICE, BOB = "alice", "bob"
DEFINITION: dict[str, Any] = {
    "name": "hello",
    "nodes": [{"id": "a", "type": "const", "config": {"value": 1}}],
    "edges": [],
}


def _definition(marker: int) -> dict[str, Any]:
    return {**DEFINITION, "nodes": [{"id": "a", "type": "const", "config": {"value": marker}}]}


@pytest.fixture
def flows(session_factory: Sessions) -> PostgresFlowStore:
    return PostgresFlowStore(session_factory)


@pytest.fixture
def executions(session_factory: Sessions) -> PostgresExecutionStore:
    return PostgresExecutionStore(session_factory)


async def _new_execution(
    flows: PostgresFlowStore,
    executions: PostgresExecutionStore,
    owner_id: str = ALICE,
    track: Track = Track.KAFKA,
    flow_id: str | None = None,
) -> ExecutionRecord:
    if flow_id is None:
        flow_id = (await flows.create(owner_id, "f", DEFINITION)).id
    return await executions.create(
        owner_id=owner_id,
        flow_id=flow_id,
        flow_version=1,
        track=track,
        events_backend=EventsBackend.KAFKA,
    )


async def _all_pages(fetch: Callable[[str | None], Awaitable[Page[T]]]) -> tuple[list[T], int]:
    items: list[T] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await fetch(cursor)
        pages += 1
        items.extend(page.items)
        if page.next_cursor is None:
            return items, pages
        cursor = page.next_cursor


# --- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+asyncpg"])
async def test_engine_accepts_every_url_form(database_url: str, scheme: str) -> None:
    url = scheme + database_url[database_url.index("://") :]
    sep = "&" if "?" in url else "?"
    url += f"{sep}application_name=tt-test&connect_timeout=5&sslmode=disable"
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            name = await connection.scalar(text("SELECT current_setting('application_name')"))
            assert name == "tt-test"
            assert await connection.scalar(text("SELECT count(*) FROM flows")) == 0
    finally:
        await engine.dispose()


def test_unix_socket_url_keeps_its_host_parameter() -> None:
    url, connect_args = split_libpq_params(
        "postgres://u:p@/db?host=/tmp/pg&application_name=x&connect_timeout=3"
    )
    assert url.drivername == "postgresql+asyncpg"
    assert url.database == "db"
    assert dict(url.query) == {"host": "/tmp/pg"}
    assert connect_args == {"timeout": 3.0, "server_settings": {"application_name": "x"}}
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        to_async_url("mysql://u@h/db")


# --- flows -------------------------------------------------------------------------------------


async def test_update_appends_versions_and_old_versions_stay_readable(
    flows: PostgresFlowStore,
) -> None:
    ref = await flows.create(ALICE, "first", _definition(1))
    assert ref.version == 1

    assert await flows.update(ALICE, ref.id, "second", _definition(2)) == 2
    assert await flows.update(ALICE, ref.id, "third", _definition(3)) == 3

    latest = await flows.get(ALICE, ref.id)
    assert (latest.version, latest.latest_version, latest.name) == (3, 3, "third")
    assert latest.definition == _definition(3)
    first = await flows.get(ALICE, ref.id, version=1)
    assert (first.version, first.latest_version, first.name) == (1, 3, "first")
    assert first.definition == _definition(1)
    with pytest.raises(NotFound):
        await flows.get(ALICE, ref.id, version=4)


async def test_concurrent_updates_each_get_their_own_version(flows: PostgresFlowStore) -> None:
    ref = await flows.create(ALICE, "f", _definition(0))
    versions = await asyncio.gather(
        *(flows.update(ALICE, ref.id, "f", _definition(i)) for i in range(1, 21))
    )
    assert sorted(versions) == list(range(2, 22))
    assert (await flows.get(ALICE, ref.id)).latest_version == 21
    for marker, version in enumerate(versions, start=1):
        assert (await flows.get(ALICE, ref.id, version)).definition == _definition(marker)


async def test_another_owners_flow_is_not_found(flows: PostgresFlowStore) -> None:
    ref = await flows.create(ALICE, "mine", DEFINITION)
    with pytest.raises(NotFound):
        await flows.get(BOB, ref.id)
    with pytest.raises(NotFound):
        await flows.update(BOB, ref.id, "taken", DEFINITION)
    assert (await flows.list(BOB)).items == []
    assert (await flows.get(ALICE, ref.id)).version == 1  # the failed update changed nothing


async def test_flow_list_pages_cover_every_flow_once_newest_first(flows: PostgresFlowStore) -> None:
    created = [(await flows.create(ALICE, f"f{i}", DEFINITION)).id for i in range(23)]
    await flows.create(BOB, "not alice's", DEFINITION)

    listed, pages = await _all_pages(lambda cursor: flows.list(ALICE, limit=5, cursor=cursor))

    assert pages == 5
    assert [f.id for f in listed] == created[::-1]


async def test_a_forged_cursor_is_rejected(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    with pytest.raises(InvalidCursor):
        await flows.list(ALICE, cursor="not-a-cursor")
    with pytest.raises(InvalidCursor):
        await executions.list(ALICE, cursor="WyJ4Il0")  # valid base64 of '["x"]'


# --- executions: creation, pinning, trees ------------------------------------------------------


async def test_execution_pins_the_flow_version_it_was_created_with(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    ref = await flows.create(ALICE, "f", _definition(1))
    options = ExecutionOptions(debug=True, breakpoints=["a"], inputs={"a": 5})
    events = [TriggerEvent(name="go", payload={"n": 1})]
    created = await executions.create(
        owner_id=ALICE,
        flow_id=ref.id,
        flow_version=1,
        track=Track.DBOS,
        events_backend=EventsBackend.DBOS,
        options=options,
        trigger_events=events,
    )
    await flows.update(ALICE, ref.id, "f", _definition(2))

    stored = await executions.get(created.id, owner_id=ALICE)
    assert stored == created
    assert stored.id.startswith("ex_")
    assert (stored.root_id, stored.parent_id, stored.depth) == (stored.id, None, 0)
    assert (stored.status, stored.track, stored.events_backend) == (S.CREATED, "dbos", "dbos")
    assert (stored.options, stored.trigger_events) == (options, tuple(events))
    assert (stored.attempt, stored.next_event_index, stored.outputs) == (0, 0, {})
    assert stored.queued_at is stored.started_at is stored.finished_at is None
    assert stored.flow_version == 1
    pinned = await flows.get(ALICE, stored.flow_id, stored.flow_version)
    assert pinned.definition == _definition(1)


async def test_execution_of_a_missing_flow_version_is_refused(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    ref = await flows.create(ALICE, "f", DEFINITION)
    with pytest.raises(NotFound):
        await executions.create(
            owner_id=ALICE,
            flow_id=ref.id,
            flow_version=2,
            track=Track.KAFKA,
            events_backend=EventsBackend.KAFKA,
        )


async def test_creating_the_same_execution_id_twice_is_refused(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    first = await _new_execution(flows, executions)
    with pytest.raises(AlreadyExists):
        await executions.create(
            owner_id=ALICE,
            flow_id=first.flow_id,
            flow_version=1,
            track=Track.KAFKA,
            events_backend=EventsBackend.KAFKA,
            execution_id=first.id,
        )


async def test_another_owners_execution_is_not_found(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    mine = await _new_execution(flows, executions)
    with pytest.raises(NotFound):
        await executions.get(mine.id, owner_id=BOB)
    with pytest.raises(NotFound):
        await executions.tree(mine.id, owner_id=BOB)
    with pytest.raises(NotFound):
        await executions.transition(mine.id, S.STOPPED, owner_id=BOB)
    with pytest.raises(NotFound):  # nor can Bob hang a child under it
        await executions.create(
            owner_id=BOB,
            flow_id=mine.flow_id,
            flow_version=1,
            track=Track.KAFKA,
            events_backend=EventsBackend.KAFKA,
            parent_id=mine.id,
        )
    assert (await executions.list(BOB)).items == []
    assert (await executions.get(mine.id, owner_id=ALICE)).status == S.CREATED


async def test_tree_returns_every_descendant_down_to_depth_three(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    root = await _new_execution(flows, executions)

    async def child(parent: ExecutionRecord) -> ExecutionRecord:
        return await executions.create(
            owner_id=ALICE,
            flow_id=root.flow_id,
            flow_version=1,
            track=root.track,
            events_backend=root.events_backend,
            parent_id=parent.id,
            trigger_events=[TriggerEvent(name="spawned")],
        )

    a, b = await child(root), await child(root)
    a1, a2 = await child(a), await child(a)
    a1x = await child(a1)
    unrelated = await _new_execution(flows, executions, flow_id=root.flow_id)

    assert (a1x.root_id, a1x.parent_id, a1x.depth) == (root.id, a1.id, 3)
    whole = await executions.tree(root.id, owner_id=ALICE)
    assert [e.id for e in whole] == [root.id, a.id, b.id, a1.id, a2.id, a1x.id]
    assert [e.depth for e in whole] == [0, 1, 1, 2, 2, 3]
    assert [e.id for e in await executions.tree(a.id)] == [a.id, a1.id, a2.id, a1x.id]
    assert [e.id for e in await executions.tree(unrelated.id)] == [unrelated.id]
    assert [e.id for e in await executions.children(root.id)] == [a.id, b.id]
    assert await executions.children(a1x.id) == []
    with pytest.raises(NotFound):
        await executions.tree("ex_missing")


# --- executions: listing -----------------------------------------------------------------------


async def test_execution_list_pages_cover_every_row_once_despite_concurrent_inserts(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    flow_id = (await flows.create(ALICE, "f", DEFINITION)).id
    before = [(await _new_execution(flows, executions, flow_id=flow_id)).id for _ in range(12)]

    seen: list[str] = []
    first = await executions.list(ALICE, limit=5)
    seen += [e.id for e in first.items]
    # New executions arriving while a client pages through must not shift later pages.
    after = [(await _new_execution(flows, executions, flow_id=flow_id)).id for _ in range(3)]
    rest, pages = await _all_pages(
        lambda cursor: executions.list(ALICE, limit=5, cursor=cursor or first.next_cursor)
    )
    seen += [e.id for e in rest]

    assert pages == 2
    assert seen == before[::-1]
    newest = await executions.list(ALICE, limit=3)
    assert [e.id for e in newest.items] == after[::-1]


async def test_execution_list_filters_by_flow_status_and_track(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    flow_a = (await flows.create(ALICE, "a", DEFINITION)).id
    flow_b = (await flows.create(ALICE, "b", DEFINITION)).id
    kafka_a = await _new_execution(flows, executions, flow_id=flow_a)
    dbos_a = await _new_execution(flows, executions, flow_id=flow_a, track=Track.DBOS)
    dbos_b = await _new_execution(flows, executions, flow_id=flow_b, track=Track.DBOS)
    await executions.transition(dbos_b.id, S.QUEUED)

    async def ids(**filters: Any) -> set[str]:
        return {e.id for e in (await executions.list(ALICE, **filters)).items}

    assert await ids(flow_id=flow_a) == {kafka_a.id, dbos_a.id}
    assert await ids(track=Track.DBOS) == {dbos_a.id, dbos_b.id}
    assert await ids(status=S.QUEUED) == {dbos_b.id}
    assert await ids(flow_id=flow_a, track=Track.DBOS, status=S.CREATED) == {dbos_a.id}
    assert await ids(flow_id=flow_b, status=S.CREATED) == set()


async def test_execution_list_filters_by_parent_root_and_time_range_across_pages(
    flows: PostgresFlowStore, executions: PostgresExecutionStore, session_factory: Sessions
) -> None:
    flow_id = (await flows.create(ALICE, "f", DEFINITION)).id
    root = await _new_execution(flows, executions, flow_id=flow_id)
    kids = [
        await executions.create(
            owner_id=ALICE,
            flow_id=flow_id,
            flow_version=1,
            track=Track.KAFKA,
            events_backend=EventsBackend.KAFKA,
            parent_id=root.id,
        )
        for _ in range(4)
    ]
    grandchild = await executions.create(
        owner_id=ALICE,
        flow_id=flow_id,
        flow_version=1,
        track=Track.KAFKA,
        events_backend=EventsBackend.KAFKA,
        parent_id=kids[0].id,
    )
    loner = await _new_execution(flows, executions, flow_id=flow_id)
    ordered = [root, *kids, grandchild, loner]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    async with session_factory() as session, session.begin():
        for minute, record in enumerate(ordered):  # one minute apart, in creation order
            await session.execute(
                text("UPDATE executions SET created_at = :at WHERE id = :id"),
                {"at": t0 + timedelta(minutes=minute), "id": record.id},
            )

    async def ids(**filters: Any) -> list[str]:
        rows, _ = await _all_pages(
            lambda cursor: executions.list(ALICE, limit=2, cursor=cursor, **filters)
        )
        return [e.id for e in rows]

    assert await ids(parent_id=root.id) == [k.id for k in reversed(kids)]
    assert await ids(root_id=root.id) == [r.id for r in reversed(ordered[:6])]
    assert await ids(root_id=loner.id) == [loner.id]
    window = {
        "created_after": t0 + timedelta(minutes=1),
        "created_before": t0 + timedelta(minutes=4),
    }
    assert await ids(**window) == [kids[2].id, kids[1].id, kids[0].id]
    assert await ids(parent_id=root.id, created_after=t0 + timedelta(minutes=3)) == [
        kids[3].id,
        kids[2].id,
    ]
    assert await ids(created_after=t0 + timedelta(minutes=6)) == [loner.id]
    assert (await executions.list(BOB, root_id=root.id)).items == []


# --- executions: the state machine -------------------------------------------------------------


async def test_a_full_run_sets_each_timestamp_once(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    ex = await _new_execution(flows, executions)

    queued = await executions.transition(ex.id, S.QUEUED, expected={S.CREATED})
    assert queued.status == S.QUEUED
    assert queued.queued_at is not None
    assert queued.started_at is None

    running = await executions.transition(ex.id, S.RUNNING)
    assert running.started_at is not None
    assert running.attempt == 1
    assert running.queued_at == queued.queued_at

    paused = await executions.transition(ex.id, S.PAUSED)
    resumed = await executions.transition(ex.id, S.RUNNING)
    assert resumed.started_at == running.started_at
    assert resumed.attempt == 1  # resuming is not a new attempt
    assert paused.finished_at is None

    done = await executions.transition(
        ex.id, S.COMPLETED, outputs={"answer": 42}, next_event_index=9
    )
    assert done.status == S.COMPLETED
    assert done.finished_at is not None
    assert done.finished_at >= done.created_at
    assert (done.outputs, done.next_event_index) == ({"answer": 42}, 9)
    assert await executions.get(ex.id) == done


async def test_failure_records_the_error(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    ex = await _new_execution(flows, executions)
    await executions.transition(ex.id, S.QUEUED)
    await executions.transition(ex.id, S.RUNNING)
    failed = await executions.transition(
        ex.id, S.FAILED, error_message="division by zero", error_node_id="div"
    )
    assert (failed.error_message, failed.error_node_id) == ("division by zero", "div")
    assert failed.finished_at is not None


async def test_a_redelivered_execution_counts_attempts_and_keeps_its_first_start(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    ex = await _new_execution(flows, executions)
    await executions.transition(ex.id, S.QUEUED)
    first = await executions.transition(ex.id, S.RUNNING, next_event_index=7)
    await executions.transition(ex.id, S.QUEUED, expected={S.RUNNING, S.PAUSED})
    second = await executions.transition(ex.id, S.RUNNING)
    assert second.attempt == 2
    assert second.started_at == first.started_at
    assert second.next_event_index == 7


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ([], S.RUNNING),  # created -> running skips the queue
        ([], S.PAUSED),
        ([S.QUEUED, S.RUNNING, S.COMPLETED], S.RUNNING),  # nothing leaves a terminal status
        ([S.QUEUED, S.RUNNING, S.COMPLETED], S.FAILED),
        ([S.STOPPED], S.QUEUED),
        ([S.QUEUED, S.RUNNING], S.RUNNING),  # no self-loops
    ],
)
async def test_illegal_transitions_are_refused_and_change_nothing(
    flows: PostgresFlowStore,
    executions: PostgresExecutionStore,
    path: list[ExecutionStatus],
    target: S,
) -> None:
    ex = await _new_execution(flows, executions)
    for status in path:
        await executions.transition(ex.id, status)
    before = await executions.get(ex.id)

    with pytest.raises(IllegalTransition) as refused:
        await executions.transition(ex.id, target, outputs={"x": 1}, error_message="no")

    assert (refused.value.current, refused.value.target) == (before.status, target)
    assert await executions.get(ex.id) == before


async def test_unexpected_current_status_is_refused(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    ex = await _new_execution(flows, executions)
    await executions.transition(ex.id, S.QUEUED)
    # Legal from queued, but the caller only wanted to stop an execution that had not been queued.
    with pytest.raises(UnexpectedStatus) as refused:
        await executions.transition(ex.id, S.STOPPED, expected={S.CREATED})
    assert refused.value.current == S.QUEUED
    assert isinstance(refused.value, IllegalTransition)
    assert (await executions.get(ex.id)).status == S.QUEUED


async def test_transition_of_a_missing_execution_is_not_found(
    executions: PostgresExecutionStore,
) -> None:
    with pytest.raises(NotFound):
        await executions.transition("ex_missing", S.QUEUED)


async def test_racing_terminal_transitions_have_exactly_one_winner(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    ex = await _new_execution(flows, executions)
    await executions.transition(ex.id, S.QUEUED)
    await executions.transition(ex.id, S.RUNNING)
    targets = [S.COMPLETED, S.FAILED, S.STOPPED] * 7

    results = await asyncio.gather(
        *(executions.transition(ex.id, t, error_message=f"by {i}") for i, t in enumerate(targets)),
        return_exceptions=True,
    )

    winners = [r for r in results if isinstance(r, ExecutionRecord)]
    losers = [r for r in results if isinstance(r, IllegalTransition)]
    assert len(winners) == 1
    assert len(losers) == len(targets) - 1
    final = await executions.get(ex.id)
    assert final == winners[0]
    assert {loser.current for loser in losers} == {final.status}


async def test_event_index_only_moves_forward(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    ex = await _new_execution(flows, executions)
    assert await executions.advance_event_index(ex.id, 5) == 5
    assert await executions.advance_event_index(ex.id, 3) == 5
    assert (await executions.transition(ex.id, S.QUEUED, next_event_index=4)).next_event_index == 5
    with pytest.raises(NotFound):
        await executions.advance_event_index("ex_missing", 1)


# --- tally counters ----------------------------------------------------------------------------


async def test_concurrent_increments_are_all_counted(session_factory: Sessions) -> None:
    counters: Counters = PostgresCounterStore(session_factory)
    results = await asyncio.gather(*(counters.increment("hits") for _ in range(50)))
    assert sorted(results) == list(range(1, 51))
    store = PostgresCounterStore(session_factory)
    assert await store.get("hits") == 50
    assert await store.get("never") == 0
    assert await store.increment("other") == 1


# --- API keys ----------------------------------------------------------------------------------


async def test_a_key_authenticates_its_owner_until_revoked(session_factory: Sessions) -> None:
    keys = PostgresKeyStore(session_factory)
    created = await keys.create(ALICE)
    assert created.key.startswith("tt_")
    assert created.key.startswith(created.prefix)
    assert len(created.key) > 40
    assert created.revoked_at is None

    assert await keys.authenticate(created.key) == ALICE
    assert await keys.authenticate(created.key + "x") is None
    assert await keys.authenticate("tt_unknown") is None
    assert await keys.authenticate("") is None

    with pytest.raises(NotFound):
        await keys.revoke(BOB, created.id)
    assert await keys.authenticate(created.key) == ALICE

    await keys.revoke(ALICE, created.id)
    await keys.revoke(ALICE, created.id)  # idempotent
    assert await keys.authenticate(created.key) is None
    [listed] = await keys.list(ALICE)
    assert listed.id == created.id
    assert listed.revoked_at is not None


async def test_keys_are_distinct_and_the_secret_is_never_stored(session_factory: Sessions) -> None:
    keys = PostgresKeyStore(session_factory)
    first, second = await keys.create(ALICE), await keys.create(BOB)
    assert first.key != second.key
    assert await keys.authenticate(second.key) == BOB
    async with session_factory() as session:
        dump = str((await session.execute(text("SELECT * FROM api_keys"))).all())
    for created in (first, second):
        assert created.key not in dump
        assert created.key[len(created.prefix) :] not in dump
