"""Running a claimed execution (core/run.py through the RunHost) on the memory adapters: the
stream it writes, how a re-run continues it, commands, fencing and hand-over."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.core.support import EMITTER, OWNER, SUM, claimed, events_of, flow, new_flow, started
from twintrack.bootstrap import MemoryContainer
from twintrack.core.records import ExecutionRecord
from twintrack.core.run import LeaseLost
from twintrack.core.run_host import ClaimedStatusWriter, RunHost
from twintrack.core.service import child_execution_id
from twintrack.domain.attempts import HANDOVER
from twintrack.domain.commands import Command
from twintrack.domain.events import Event, EventType
from twintrack.domain.execution import ExecutionStatus, Track

_S = ExecutionStatus
TALLY = flow(
    [("count", "tally", {"name": "runs"}), ("out", "output", {"name": "count"})],
    [("count.count", "out.value")],
)


class Failures:
    """The attempts ledger, recording what the host reports."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []

    async def run_failed(self, **details: Any) -> None:
        self.runs.append(details)

    async def give_up_if_exhausted(self, execution_id: str, *, taker: str | None = None) -> bool:
        return False


@pytest.fixture
def failures() -> Failures:
    return Failures()


@pytest.fixture
def host(app: MemoryContainer, failures: Failures) -> RunHost:
    return app.run_host("w-1", failures=failures)


async def run(app: MemoryContainer, host: RunHost, execution_id: str) -> ExecutionRecord:
    claim, record = await claimed(app, execution_id, host.worker_id)
    await host.launch(claim, record)
    return await app.executions.get(execution_id)


def assert_contiguous(events: list[Event]) -> None:
    assert [e.index for e in events] == list(range(len(events)))
    assert events[0].type is EventType.EXECUTION_CREATED
    assert [e.type.is_terminal for e in events].count(True) == 1
    assert events[-1].type.is_terminal


async def test_a_run_writes_a_contiguous_stream_and_records_its_end(
    app: MemoryContainer, host: RunHost
) -> None:
    ex = (await started(app, await new_flow(app, SUM))).id
    ended = await run(app, host, ex)
    assert (ended.status, ended.outputs, ended.attempt) == (_S.COMPLETED, {"result": 5}, 1)
    events = events_of(app, ex)
    assert_contiguous(events)
    assert [e.type for e in events[:3]] == [
        EventType.EXECUTION_CREATED,
        EventType.EXECUTION_QUEUED,
        EventType.EXECUTION_STARTED,
    ]
    assert events[-1].type is EventType.EXECUTION_COMPLETED
    assert ended.next_event_index == len(events)
    assert await app.claims.held_by("w-1") == []  # released with the end
    assert host.runs == {}


async def test_a_subscriber_sees_the_whole_run_live(app: MemoryContainer, host: RunHost) -> None:
    ex = (await started(app, await new_flow(app, TALLY))).id
    watching = asyncio.create_task(_collect(app, ex))
    await app.ports.buses[app.stores.executions.records[ex].events_backend].wait_for_subscriber(ex)
    ended = await run(app, host, ex)
    assert await watching == events_of(app, ex)
    assert ended.outputs == {"count": 1}
    assert await app.counters.get("runs") == 1


async def _collect(app: MemoryContainer, ex: str) -> list[Event]:
    return [e async for e in await app.service.subscribe(OWNER, ex)]


async def _first_attempt_wrote(app: MemoryContainer, ex: str, *types: EventType) -> None:
    """Attempt 1 wrote `types` after the service's events, then its worker died and recovery
    re-queued it."""
    await claimed(app, ex, "w-dead")
    bus = app.ports.buses[app.stores.executions.records[ex].events_backend]
    for offset, event_type in enumerate(types):
        data = {"outputs": {"result": 5}} if event_type.is_terminal else {}
        await bus.publish(Event(execution_id=ex, index=2 + offset, type=event_type, data=data))
    await app.claims.expire_now(ex)
    await app.executions.transition(ex, _S.QUEUED, expected={_S.RUNNING})


async def test_a_re_run_continues_the_stream_with_retrying(
    app: MemoryContainer, host: RunHost
) -> None:
    ex = (await started(app, await new_flow(app, SUM))).id
    await _first_attempt_wrote(app, ex, EventType.EXECUTION_STARTED, EventType.NODE_STARTED)
    ended = await run(app, host, ex)
    assert (ended.status, ended.attempt) == (_S.COMPLETED, 2)
    events = events_of(app, ex)
    assert_contiguous(events)
    assert (events[4].type, events[4].data) == (EventType.EXECUTION_RETRYING, {"attempt": 2})


async def test_a_re_run_after_an_unrecorded_ending_records_it_and_runs_nothing(
    app: MemoryContainer, host: RunHost
) -> None:
    ex = (await started(app, await new_flow(app, SUM))).id
    await _first_attempt_wrote(app, ex, EventType.EXECUTION_STARTED, EventType.EXECUTION_COMPLETED)
    ended = await run(app, host, ex)
    assert (ended.status, ended.outputs) == (_S.COMPLETED, {"result": 5})
    assert len(events_of(app, ex)) == 4  # nothing after the ending


async def test_a_run_spawns_its_children_through_the_service(
    app: MemoryContainer, host: RunHost
) -> None:
    ex = (await started(app, await new_flow(app, EMITTER))).id
    ended = await run(app, host, ex)
    assert ended.status is _S.COMPLETED
    child_id = child_execution_id(ex, "spawn")
    spawned = [e for e in events_of(app, ex) if e.type is EventType.CHILD_SPAWNED]
    assert [e.data["child_execution_id"] for e in spawned] == [child_id]
    child = await app.executions.get(child_id)
    assert (child.status, child.depth, child.trigger_events[0].payload) == (_S.QUEUED, 1, 7)
    assert (child_id, 1) in app.ports.queues[Track.KAFKA].enqueued
    # The child's own run outputs what it was given.
    assert (await run(app, host, child_id)).outputs == {"payload": 7}


async def test_a_pause_sent_before_the_worker_is_obeyed_then_resume_ends_the_run(
    app: MemoryContainer, host: RunHost
) -> None:
    ex = (await started(app, await new_flow(app, SUM))).id
    await app.service.command(OWNER, ex, Command.PAUSE)
    claim, record = await claimed(app, ex)
    running = host.launch(claim, record)
    paused = await _next_of_type(app, ex, EventType.EXECUTION_PAUSED)
    assert (await app.executions.get(ex)).status is _S.PAUSED
    await app.service.command(OWNER, ex, Command.RESUME)
    result = await running
    assert result is not None
    assert result.status is _S.COMPLETED
    types = [e.type for e in events_of(app, ex)]
    assert types.index(EventType.EXECUTION_RESUMED) > paused.index
    assert (await app.executions.get(ex)).status is _S.COMPLETED


async def _next_of_type(app: MemoryContainer, ex: str, wanted: EventType) -> Event:
    async for event in await app.service.subscribe(OWNER, ex):
        if event.type is wanted:
            return event
    raise AssertionError(f"no {wanted} in the stream")


async def test_a_stop_ends_a_running_execution_stopped(app: MemoryContainer, host: RunHost) -> None:
    slow = flow(
        [("wait", "delay", {"ms": 600_000}), ("out", "output", {"name": "x"})],
        [("wait.value", "out.value")],
    )
    ex = (await started(app, await new_flow(app, slow))).id
    claim, record = await claimed(app, ex)
    running = host.launch(claim, record)
    await _next_of_type(app, ex, EventType.NODE_STARTED)
    await app.service.command(OWNER, ex, Command.STOP, reason="enough")
    result = await running
    assert result is not None
    assert result.status is _S.STOPPED
    ended = await app.executions.get(ex)
    assert (ended.status, ended.error_message) == (_S.STOPPED, "enough")
    assert_contiguous(events_of(app, ex))


async def test_a_worker_that_lost_its_claim_cannot_write(app: MemoryContainer) -> None:
    ex = (await started(app, await new_flow(app, SUM))).id
    old, _ = await claimed(app, ex, "w-old")
    await app.claims.expire_now(ex)
    taken = await app.claims.claim(ex, "w-new", 30, track=Track.KAFKA, takeover=True)
    assert taken is not None
    assert (taken[0].generation, taken[1].attempt) == (old.generation + 1, 2)
    with pytest.raises(LeaseLost):
        await ClaimedStatusWriter(app.claims, old).paused()
    assert await app.claims.renew("w-old", [(ex, old.generation)], 30) == set()
    assert (await app.executions.get(ex)).status is _S.RUNNING


async def test_hand_back_requeues_without_spending_an_attempt(
    app: MemoryContainer, host: RunHost
) -> None:
    ex = (await started(app, await new_flow(app, SUM))).id
    claim, record = await claimed(app, ex)
    await host.hand_back(claim, record)
    again = await app.executions.get(ex)
    assert again.status is _S.QUEUED
    assert [(a.reason, a.previous_worker_id, a.attempt) for a in app.stores.claims.recoveries] == [
        (HANDOVER, "w-1", 1)
    ]
    assert app.ports.queues[Track.KAFKA].enqueued[-1] == (ex, 2)
    assert await app.claims.hand_back(claim) is None  # no longer this worker's


async def test_a_crashed_run_is_reported_and_its_claim_left_to_expire(
    app: MemoryContainer, host: RunHost, failures: Failures, monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = (await started(app, await new_flow(app, SUM))).id

    async def lost(execution_id: str | None = None) -> None:
        raise RuntimeError("events lost")

    monkeypatch.setattr(
        app.ports.buses[app.stores.executions.records[ex].events_backend], "flush", lost
    )
    ended = await run(app, host, ex)
    assert ended.status is _S.RUNNING  # recovery re-delivers it when the lease runs out
    assert await app.claims.held_by("w-1") == [ex]
    assert [(f["execution_id"], f["attempt"]) for f in failures.runs] == [(ex, 1)]
    assert "crashed: RuntimeError: events lost" in failures.runs[0]["detail"]
