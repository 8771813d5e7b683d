"""Commands: stored for the worker that runs the execution, or applied at once when none does."""

from __future__ import annotations

import pytest

from tests.unit.core.support import OWNER, claimed, events_of, new_flow, started, types_of
from twintrack.bootstrap import MemoryContainer
from twintrack.core.service import Conflict
from twintrack.domain.commands import Command
from twintrack.domain.events import Event, EventType
from twintrack.domain.execution import ExecutionStatus, Track

_S = ExecutionStatus


async def test_pause_resume_and_step_are_stored_on_the_channel_in_order(
    app: MemoryContainer,
) -> None:
    record = await started(app, await new_flow(app))
    for command in (Command.PAUSE, Command.STEP, Command.RESUME):
        after = await app.service.command(OWNER, record.id, command, reason="ops")
        assert after.status is _S.QUEUED  # the worker applies them, not the service
    assert app.ports.commands.of(record.id) == [
        (Command.PAUSE, "ops"),
        (Command.STEP, "ops"),
        (Command.RESUME, "ops"),
    ]
    pending = await app.commands.pending(record.id)
    assert [m.id for m in pending] == sorted(m.id for m in pending)


async def test_a_command_on_a_finished_execution_is_a_conflict(app: MemoryContainer) -> None:
    record = await started(app, await new_flow(app))
    await app.service.command(OWNER, record.id, Command.STOP)
    for command in (Command.PAUSE, Command.STOP, Command.START):
        with pytest.raises(Conflict):
            await app.service.command(OWNER, record.id, command)
    assert app.ports.commands.of(record.id) == []


@pytest.mark.parametrize("start_first", [False, True])
async def test_stop_before_any_worker_ends_it_stopped_with_its_event(
    app: MemoryContainer, start_first: bool
) -> None:
    flow_id = await new_flow(app)
    if start_first:
        record = await started(app, flow_id)
    else:
        record = await app.service.create(OWNER, flow_id)
    stopped = await app.service.command(OWNER, record.id, Command.STOP, reason="not needed")
    assert (stopped.status, stopped.error_message) == (_S.STOPPED, "not needed")
    assert stopped.finished_at is not None
    last = events_of(app, record.id)[-1]
    assert (last.type, last.data["reason"]) == (EventType.EXECUTION_STOPPED, "not needed")
    assert [e.index for e in events_of(app, record.id)] == list(range(last.index + 1))
    assert app.ports.queues[Track.KAFKA].cancelled == [record.id]
    # The stream is complete: a subscriber gets every event and the end.
    got = [e async for e in await app.service.subscribe(OWNER, record.id)]
    assert got == events_of(app, record.id)


async def test_stop_of_a_running_execution_is_sent_to_its_worker(app: MemoryContainer) -> None:
    record = await started(app, await new_flow(app))
    await claimed(app, record.id)
    after = await app.service.command(OWNER, record.id, Command.STOP)
    assert after.status is _S.RUNNING  # until its engine obeys
    assert app.ports.commands.of(record.id) == [(Command.STOP, "stopped by request")]
    assert await app.executions.stop_reason(record.id) == "stopped by request"


async def _crashed_attempt(app: MemoryContainer, *written: EventType) -> str:
    """An execution whose first run wrote `written` (from index 2), then died; recovery put it
    back to `queued` (the row never learnt how far the stream got)."""
    record = await started(app, await new_flow(app))
    await claimed(app, record.id)
    bus = app.ports.buses[record.events_backend]
    for offset, event_type in enumerate(written):
        data = {"outputs": {"result": 5}} if event_type.is_terminal else {}
        await bus.publish(
            Event(execution_id=record.id, index=2 + offset, type=event_type, data=data)
        )
    await app.executions.transition(record.id, _S.QUEUED, expected={_S.RUNNING})
    return record.id


async def test_stop_after_a_crash_continues_the_stream_where_the_bus_ends(
    app: MemoryContainer,
) -> None:
    ex = await _crashed_attempt(
        app, EventType.EXECUTION_STARTED, EventType.NODE_STARTED, EventType.NODE_COMPLETED
    )
    assert (await app.executions.get(ex)).next_event_index == 2
    stopped = await app.service.command(OWNER, ex, Command.STOP)
    assert stopped.status is _S.STOPPED
    assert [(e.index, e.type.value) for e in events_of(app, ex)][-2:] == [
        (4, "node.completed"),
        (5, "execution.stopped"),
    ]
    assert stopped.next_event_index == 6


async def test_stop_after_a_crash_that_already_ended_keeps_that_ending(
    app: MemoryContainer,
) -> None:
    ex = await _crashed_attempt(app, EventType.EXECUTION_STARTED, EventType.EXECUTION_COMPLETED)
    after = await app.service.command(OWNER, ex, Command.STOP)
    assert (after.status, after.outputs) == (_S.COMPLETED, {"result": 5})
    assert types_of(app, ex)[-1] == "execution.completed"  # no second ending
