"""The memory stores keep the contracts of the Postgres ones (tests/integration/postgres/
test_stores.py checks those): the state machine, owner scoping, pages, the lock's all-or-nothing."""

from __future__ import annotations

import pytest

from twintrack.adapters.memory import MemoryStores
from twintrack.core.errors import InvalidCursor, NotFound, UnexpectedStatus
from twintrack.core.records import ExecutionRecord
from twintrack.domain.execution import EventsBackend, ExecutionStatus, IllegalTransition, Track

_S = ExecutionStatus
FLOW = {"name": "f", "nodes": [], "edges": []}


async def _execution(stores: MemoryStores, owner: str = "alice") -> ExecutionRecord:
    flow = await stores.flows.create(owner, "f", FLOW)
    return await stores.executions.create(
        owner_id=owner,
        flow_id=flow.id,
        flow_version=flow.version,
        track=Track.KAFKA,
        events_backend=EventsBackend.KAFKA,
    )


async def test_the_state_machine_refuses_illegal_and_unexpected_moves() -> None:
    stores = MemoryStores()
    ex = (await _execution(stores)).id
    with pytest.raises(IllegalTransition):
        await stores.executions.transition(ex, _S.COMPLETED)
    with pytest.raises(UnexpectedStatus):
        await stores.executions.transition(ex, _S.QUEUED, expected={_S.RUNNING})
    queued = await stores.executions.transition(ex, _S.QUEUED)
    running = await stores.executions.transition(ex, _S.RUNNING, next_event_index=5)
    assert (running.attempt, running.next_event_index) == (1, 5)
    done = await stores.executions.transition(ex, _S.COMPLETED, next_event_index=2)
    assert done.next_event_index == 5  # never goes down
    assert done.finished_at is not None
    assert done.queued_at == queued.queued_at


async def test_another_owners_execution_is_not_found() -> None:
    stores = MemoryStores()
    ex = (await _execution(stores)).id
    with pytest.raises(NotFound):
        await stores.executions.get(ex, "bob")
    with pytest.raises(NotFound):
        await stores.executions.transition(ex, _S.QUEUED, owner_id="bob")
    with pytest.raises(NotFound):
        await stores.flows.get("bob", (await stores.executions.get(ex)).flow_id)


async def test_pages_return_each_execution_once_newest_first() -> None:
    stores = MemoryStores()
    made = [(await _execution(stores)).id for _ in range(5)]
    seen, cursor = [], None
    while True:
        page = await stores.executions.list("alice", limit=2, cursor=cursor)
        seen += [r.id for r in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == made[::-1]
    with pytest.raises(InvalidCursor):
        await stores.executions.list("alice", cursor="garbage")
    with pytest.raises(ValueError, match="limit"):
        await stores.executions.list("alice", limit=0)


async def test_a_locked_block_that_raises_changes_nothing() -> None:
    stores = MemoryStores()
    ex = (await _execution(stores)).id

    async def queue_then_fail() -> None:
        async with stores.executions.locked(ex) as row:
            await row.transition(_S.QUEUED)
            assert row.record.status is _S.QUEUED
            raise RuntimeError("before commit")

    with pytest.raises(RuntimeError):
        await queue_then_fail()
    assert (await stores.executions.get(ex)).status is _S.CREATED
    async with stores.executions.locked(ex) as row:
        await row.transition(_S.QUEUED)
    assert (await stores.executions.get(ex)).status is _S.QUEUED


async def test_keys_authenticate_until_revoked() -> None:
    stores = MemoryStores()
    created = await stores.keys.create("alice", admin=True)
    principal = await stores.keys.authenticate_key(created.key)
    assert principal is not None
    assert (principal.owner_id, principal.is_admin) == ("alice", True)
    await stores.keys.revoke("alice", created.id)
    assert await stores.keys.authenticate(created.key) is None
    with pytest.raises(NotFound):
        await stores.keys.revoke("bob", created.id)


async def test_a_keyed_increment_counts_once() -> None:
    stores = MemoryStores()
    assert await stores.counters.increment("n", key="k") == 1
    assert await stores.counters.increment("n", key="k") == 1
    assert await stores.counters.increment("n") == 2
    assert await stores.counters.get("n") == 2
