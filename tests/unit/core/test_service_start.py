"""Starting an execution: once, never after its end, within the owner's running limit."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.core.support import OWNER, app_with, enqueued, new_flow, types_of
from twintrack.bootstrap import MemoryContainer
from twintrack.core.errors import NotFound
from twintrack.core.service import Conflict
from twintrack.domain.commands import Command
from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.domain.limits import LimitExceeded

_S = ExecutionStatus


async def test_start_queues_the_execution_with_its_event_and_hands_it_to_its_track(
    app: MemoryContainer,
) -> None:
    record = await app.service.create(OWNER, await new_flow(app))
    queued = await app.service.start(OWNER, record.id)
    assert queued.status is _S.QUEUED
    assert queued.queued_at is not None
    assert types_of(app, record.id) == ["execution.created", "execution.queued"]
    assert queued.next_event_index == 2  # a worker numbers its events after these
    assert enqueued(app) == [(record.id, 1)]


async def test_starting_twice_is_harmless(app: MemoryContainer) -> None:
    record = await app.service.create(OWNER, await new_flow(app))
    first = await app.service.start(OWNER, record.id)
    again = await app.service.start(OWNER, record.id)
    assert again.status is _S.QUEUED
    assert again.queued_at == first.queued_at
    assert types_of(app, record.id) == ["execution.created", "execution.queued"]
    assert enqueued(app) == [(record.id, 1)]


async def test_concurrent_starts_queue_it_once(app: MemoryContainer) -> None:
    record = await app.service.create(OWNER, await new_flow(app))
    await asyncio.gather(*(app.service.start(OWNER, record.id) for _ in range(5)))
    assert types_of(app, record.id) == ["execution.created", "execution.queued"]
    assert enqueued(app) == [(record.id, 1)]


async def test_a_finished_execution_cannot_be_started(app: MemoryContainer) -> None:
    record = await app.service.create(OWNER, await new_flow(app))
    await app.service.command(OWNER, record.id, Command.STOP)
    with pytest.raises(Conflict, match="stopped"):
        await app.service.start(OWNER, record.id)
    assert enqueued(app) == []


async def test_another_owner_cannot_start_it(app: MemoryContainer) -> None:
    record = await app.service.create(OWNER, await new_flow(app))
    with pytest.raises(NotFound):
        await app.service.start("mallory", record.id)
    assert (await app.executions.get(record.id)).status is _S.CREATED


async def test_over_the_owner_running_limit_the_execution_stays_created() -> None:
    app = app_with(max_running_executions_per_owner=1)
    flow_id = await new_flow(app)
    first = await app.service.create(OWNER, flow_id)
    second = await app.service.create(OWNER, flow_id)
    await app.service.start(OWNER, first.id)
    with pytest.raises(LimitExceeded) as refused:
        await app.service.start(OWNER, second.id)
    assert refused.value.setting == "MAX_RUNNING_EXECUTIONS_PER_OWNER"
    assert (await app.executions.get(second.id)).status is _S.CREATED
    assert types_of(app, second.id) == ["execution.created"]
    # Another owner is not held back, and a freed slot lets the second one start.
    other = await app.service.create("bob", await new_flow(app, owner="bob"))
    assert (await app.service.start("bob", other.id)).status is _S.QUEUED
    await app.service.command(OWNER, first.id, Command.STOP)
    assert (await app.service.start(OWNER, second.id)).status is _S.QUEUED
    assert enqueued(app) == [(first.id, 1), (other.id, 1), (second.id, 1)]


async def test_concurrent_starts_of_one_owner_never_pass_the_limit() -> None:
    app = app_with(max_running_executions_per_owner=2)
    flow_id = await new_flow(app)
    records = [await app.service.create(OWNER, flow_id) for _ in range(5)]
    outcomes = await asyncio.gather(
        *(app.service.start(OWNER, r.id) for r in records), return_exceptions=True
    )
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 2
    assert all(isinstance(o, LimitExceeded) for o in outcomes if isinstance(o, BaseException))
    assert len(enqueued(app, Track.KAFKA)) == 2
