"""Per-owner limits in the store, on real PostgreSQL: exact under concurrency, and `/tree` pages."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres import PostgresExecutionStore, PostgresFlowStore
from twintrack.adapters.postgres import executions as executions_module
from twintrack.adapters.postgres.db import driver_in
from twintrack.core.errors import InvalidCursor, NotFound
from twintrack.core.records import ExecutionRecord
from twintrack.domain.execution import EventsBackend, ExecutionStatus, Track, TriggerEvent
from twintrack.domain.limits import RUNNING_STATUSES, LimitExceeded, OwnerLimits

pytestmark = pytest.mark.integration

S = ExecutionStatus
Sessions = async_sessionmaker[AsyncSession]
DEFINITION: dict[str, Any] = {
    "name": "one",
    "nodes": [{"id": "a", "type": "const", "config": {"value": 1}}],
    "edges": [],
}


@pytest.fixture
def flows(session_factory: Sessions) -> PostgresFlowStore:
    return PostgresFlowStore(session_factory)


@pytest.fixture
def executions(session_factory: Sessions) -> PostgresExecutionStore:
    return PostgresExecutionStore(session_factory)


async def _root(
    flows: PostgresFlowStore, executions: PostgresExecutionStore, owner: str = "alice"
) -> ExecutionRecord:
    flow_id = (await flows.create(owner, "f", DEFINITION)).id
    return await _create(executions, owner, flow_id)


async def _create(
    executions: PostgresExecutionStore,
    owner: str,
    flow_id: str,
    parent: ExecutionRecord | None = None,
    limits: OwnerLimits | None = None,
) -> ExecutionRecord:
    return await executions.create(
        owner_id=owner,
        flow_id=flow_id,
        flow_version=1,
        track=Track.KAFKA,
        events_backend=EventsBackend.KAFKA,
        parent_id=parent.id if parent else None,
        trigger_events=[TriggerEvent(name="go")] if parent else [],
        limits=limits,
    )


async def test_concurrent_spawns_in_one_tree_never_pass_the_cap(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    """30 children of one tree at once (as many workers would spawn them), cap 10: exactly 9
    children join the root; the rest are refused naming the limit and leave no row."""
    root = await _root(flows, executions)
    limits = OwnerLimits(max_executions_per_tree=10)
    first = await _create(executions, "alice", root.flow_id, root, limits)

    async def spawn(i: int) -> ExecutionRecord | LimitExceeded:
        parent = root if i % 2 else first  # children at two depths, one tree
        try:
            return await _create(executions, "alice", root.flow_id, parent, limits)
        except LimitExceeded as exc:
            return exc

    outcomes = await asyncio.gather(*(spawn(i) for i in range(30)))
    refused = [o for o in outcomes if isinstance(o, LimitExceeded)]
    assert len(refused) == 30 - 8
    assert {(r.setting, r.limit) for r in refused} == {("MAX_EXECUTIONS_PER_TREE", 10)}
    assert "MAX_EXECUTIONS_PER_TREE is 10" in str(refused[0])
    assert len(await executions.tree(root.id)) == 10
    # Another tree is not affected by this one being full.
    other = await _root(flows, executions)
    assert (await _create(executions, "alice", other.flow_id, other, limits)).root_id == other.id


async def test_concurrent_starts_of_one_owner_never_pass_the_running_limit(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    """What `ExecutionService.start` does, 12 at once with a limit of 3: exactly 3 go to
    `queued`; the others stay `created`. The owner's lock is not held while a start publishes,
    so the admitted ones are in flight together; none of them slips past the limit. Another
    owner is not held back."""
    root = await _root(flows, executions)
    created = [await _create(executions, "alice", root.flow_id) for _ in range(12)]
    limits = OwnerLimits(max_running_executions_per_owner=3)

    async def start(record: ExecutionRecord) -> bool:
        async with executions.locked(record.id) as row:
            locked = row.record
            running = await row.admit_running(3)
            try:
                limits.check_running(running, locked.owner_id)
            except LimitExceeded:
                return False
            await asyncio.sleep(0.01)  # widen the window a racing count would slip through
            await row.transition(S.QUEUED)
            return True

    started = await asyncio.gather(*(start(r) for r in created))
    assert sum(started) == 3
    statuses = [(await executions.get(r.id)).status for r in created]
    assert statuses.count(S.QUEUED) == 3
    assert statuses.count(S.CREATED) == 9
    bob = await _root(flows, executions, "bob")
    async with executions.locked(bob.id) as row:
        assert await row.admit_running(3) == 0
    assert await _admissions(executions) == 0  # each settled by its commit or given back


async def test_running_count_covers_queued_running_and_paused_only(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    root = await _root(flows, executions)
    path = {
        S.CREATED: [],
        S.QUEUED: [S.QUEUED],
        S.RUNNING: [S.QUEUED, S.RUNNING],
        S.PAUSED: [S.QUEUED, S.RUNNING, S.PAUSED],
        S.COMPLETED: [S.QUEUED, S.RUNNING, S.COMPLETED],
        S.FAILED: [S.QUEUED, S.RUNNING, S.FAILED],
        S.STOPPED: [S.STOPPED],
    }
    assert set(path) == set(S)
    for steps in path.values():
        record = await _create(executions, "alice", root.flow_id)
        for status in steps:
            await executions.transition(record.id, status)
    shadow = await executions.create(  # a shadow run has a limit of its own
        owner_id="alice",
        flow_id=root.flow_id,
        flow_version=1,
        track=Track.KAFKA,
        events_backend=EventsBackend.KAFKA,
        shadow_of=root.id,
    )
    await executions.transition(shadow.id, S.QUEUED)
    async with executions.locked(root.id) as row:
        # the database function (migration 0012) counts exactly the domain's rule
        assert await row.admit_running(100) == len(RUNNING_STATUSES) == 3


async def test_tree_pages_cover_every_member_once_with_the_whole_trees_counts(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    root = await _root(flows, executions)
    members = [root]
    for i in range(11):
        parent = members[i // 3]
        members.append(await _create(executions, "alice", root.flow_id, parent))
    await executions.transition(members[-1].id, S.STOPPED)
    seen: list[ExecutionRecord] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, counts = await executions.tree_page(root.id, "alice", limit=5, cursor=cursor)
        assert counts == {S.CREATED: 11, S.STOPPED: 1}  # every page: the whole tree
        pages += 1
        seen.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3
    assert sorted(e.id for e in seen) == sorted(e.id for e in members)
    assert [e.depth for e in seen] == sorted(e.depth for e in seen)
    sub, counts = await executions.tree_page(members[1].id, "alice", limit=100)
    assert sub.items[0].id == members[1].id
    assert sub.next_cursor is None
    assert sum(counts.values()) == len(sub.items) == 1 + 3
    with pytest.raises(NotFound):
        await executions.tree_page(root.id, "bob")
    with pytest.raises(InvalidCursor):
        await executions.tree_page(root.id, "alice", cursor="bm90LWEtY3Vyc29y")


async def _admissions(executions: PostgresExecutionStore) -> int:
    async with executions._single() as session:
        return int(await session.scalar(text("SELECT count(*) FROM owner_admissions")) or 0)


async def test_an_admitted_start_holds_its_slot_until_it_commits_or_gives_it_back(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    """Limit 1. While one start is admitted and still publishing (its transaction open, the
    owner's lock already free), a second start of the owner counts it and is refused. One
    that ends without committing (refused later, its publish failed) gives the slot back."""
    root = await _root(flows, executions)
    other = await _create(executions, "alice", root.flow_id)

    async def start_whose_publish_fails() -> None:
        async with executions.locked(root.id) as first:
            assert await first.admit_running(1) == 0
            async with executions.locked(other.id) as second:
                began = time.monotonic()
                assert await second.admit_running(1, wait_s=2) == 1  # counted, not waited on
                assert time.monotonic() - began < 1.5
            raise RuntimeError("publish failed")

    with pytest.raises(RuntimeError, match="publish failed"):
        await start_whose_publish_fails()
    assert (await executions.get(root.id)).status is S.CREATED
    assert await _admissions(executions) == 0
    async with executions.locked(other.id) as row:
        assert await row.admit_running(1) == 0
        await row.transition(S.QUEUED)
    async with executions.locked(root.id) as row:
        assert await row.admit_running(1) == 1  # now as `queued`, no admission left
    assert await _admissions(executions) == 0


async def test_the_admission_of_a_start_that_died_lapses(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    """A process that died between its admission and its commit leaves the row behind: it
    counts while it could still commit, and is dropped once it has lapsed."""
    root = await _root(flows, executions)
    dead = await _create(executions, "alice", root.flow_id)
    async with executions._single() as session:
        await session.execute(
            text("INSERT INTO owner_admissions VALUES (:id, 'alice', now() + interval '1 hour')"),
            {"id": dead.id},
        )
    async with executions.locked(root.id) as row:
        assert await row.admit_running(1) == 1
    async with executions._single() as session:
        await session.execute(
            text("UPDATE owner_admissions SET expires_at = now() - interval '1 s'")
        )
    async with executions.locked(root.id) as row:
        assert await row.admit_running(1) == 0
        await row.transition(S.QUEUED)
    assert await _admissions(executions) == 0


async def test_a_start_slower_than_its_admission_counts_again_before_it_commits(
    flows: PostgresFlowStore, executions: PostgresExecutionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Limit 1. A start admitted so long ago that its admission may have lapsed counts again,
    under the owner's lock, in its own transaction: another start that took the slot in the
    meantime wins, this one is refused and stays `created`."""
    monkeypatch.setattr(executions_module, "ADMISSION_TTL_S", 0.2)
    root = await _root(flows, executions)
    other = await _create(executions, "alice", root.flow_id)

    async def slow_start() -> None:
        async with executions.locked(root.id) as slow:
            assert await slow.admit_running(1) == 0
            deadline = time.monotonic() + 5
            while True:  # until the slow one's admission has lapsed
                async with executions.locked(other.id) as fast:
                    if await fast.admit_running(1) == 0:
                        await fast.transition(S.QUEUED)
                        break
                assert time.monotonic() < deadline
            await slow.transition(S.QUEUED)

    with pytest.raises(LimitExceeded, match="MAX_RUNNING_EXECUTIONS_PER_OWNER"):
        await slow_start()
    assert (await executions.get(root.id)).status is S.CREATED
    assert (await executions.get(other.id)).status is S.QUEUED


async def test_a_start_stuck_behind_a_held_owner_count_gives_up_in_bounded_time(
    flows: PostgresFlowStore,
    executions: PostgresExecutionStore,
    session_factory: Sessions,
) -> None:
    """A start that must count in its own transaction holds the owner's lock until it commits:
    the next start of that owner gives up after `wait_s` with TimeoutError (503), and the held
    lock is not harmed."""
    root = await _root(flows, executions)
    other = await _create(executions, "alice", root.flow_id)
    async with session_factory.begin() as held:
        await held.execute(text("SELECT 1"))  # begun: the driver joins its transaction
        await PostgresExecutionStore.admit(await driver_in(held), "alice", root.id, 10)
        began = time.monotonic()
        with pytest.raises(TimeoutError, match="owner alice"):
            async with executions.locked(other.id) as row:
                await row.admit_running(10, wait_s=0.3)
        assert 0.25 < time.monotonic() - began < 3
    async with executions.locked(other.id) as row:  # free again once committed
        assert await row.admit_running(10, wait_s=0.3) == 1  # root's admission still counts
