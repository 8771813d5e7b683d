"""Per-owner limits in the store, on real PostgreSQL: exact under concurrency, and `/tree` pages."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres import PostgresExecutionStore, PostgresFlowStore
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
    `queued`; the others stay `created`. Another owner is not held back."""
    root = await _root(flows, executions)
    created = [await _create(executions, "alice", root.flow_id) for _ in range(12)]
    limits = OwnerLimits(max_running_executions_per_owner=3)

    async def start(record: ExecutionRecord) -> bool:
        async with executions.locked(record.id) as row:
            locked = row.record
            running = await row.owner_running_count()
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
        assert await row.owner_running_count() == 0


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
        assert await row.owner_running_count() == len(RUNNING_STATUSES) == 3


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


async def test_a_start_stuck_behind_a_held_owner_count_gives_up_in_bounded_time(
    flows: PostgresFlowStore, executions: PostgresExecutionStore
) -> None:
    """A start that hangs (a stalled broker) holds the owner's count: the next start of that
    owner gives up after `wait_s` with TimeoutError (503), and the held lock is not harmed."""
    root = await _root(flows, executions)
    other = await _create(executions, "alice", root.flow_id)
    async with executions.locked(root.id) as held:
        await held.owner_running_count()
        began = time.monotonic()
        with pytest.raises(TimeoutError, match="owner alice"):
            async with executions.locked(other.id) as row:
                await row.owner_running_count(wait_s=0.3)
        assert 0.25 < time.monotonic() - began < 3
        assert await held.owner_running_count() == 0
    async with executions.locked(other.id) as row:  # free again once committed
        assert await row.owner_running_count(wait_s=0.3) == 0
