"""Bulk stop and reroute by filter (core/bulk.py) on the memory adapters: what a filter selects,
a dry run that changes nothing, the per-id result map, the cap, and at most once per execution
under an operation id however often the request is sent."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from tests.unit.core.support import OWNER, app_with, claimed, new_flow
from twintrack.bootstrap import MemoryContainer
from twintrack.core.bulk import (
    ExecutionFilter,
    InvalidBulkRequest,
    OperationIdReused,
    Outcome,
)
from twintrack.core.recovery_ports import Reason
from twintrack.domain.commands import Command
from twintrack.domain.execution import EventsBackend, ExecutionStatus, Track

_S = ExecutionStatus


async def make(
    app: MemoryContainer,
    track: Track,
    *,
    owner: str = OWNER,
    flow_id: str | None = None,
    start: bool = False,
) -> str:
    record = await app.executions.create(
        owner_id=owner,
        flow_id=flow_id or await new_flow(app, owner=owner),
        flow_version=1,
        track=track,
        events_backend=EventsBackend.KAFKA,
        next_event_index=1,
    )
    if start:
        await app.executions.transition(record.id, _S.QUEUED)
    return record.id


def stops(app: MemoryContainer, execution_id: str) -> int:
    status = app.stores.executions.records[execution_id].status
    sent = [c for c, _ in app.ports.commands.of(execution_id) if c is Command.STOP]
    return len(sent) + (status is _S.STOPPED)


async def test_the_filter_selects_by_track_status_flow_owner_and_creation_time() -> None:
    app = app_with()
    flow_id = await new_flow(app)
    dbos_queued = await make(app, Track.DBOS, flow_id=flow_id, start=True)
    dbos_created = await make(app, Track.DBOS, flow_id=flow_id)
    kafka_queued = await make(app, Track.KAFKA, flow_id=flow_id, start=True)
    other_flow = await make(app, Track.DBOS, start=True)
    bob = await make(app, Track.DBOS, owner="bob", start=True)
    bulk = app.bulk

    async def ids(where: ExecutionFilter) -> set[str]:
        result = await bulk.stop(where, reason="r", requested_by="ops", dry_run=True)
        return set(result.results)

    assert await ids(ExecutionFilter(track=Track.DBOS)) == {
        dbos_queued,
        dbos_created,
        other_flow,
        bob,
    }
    assert await ids(ExecutionFilter(statuses=(_S.QUEUED,), flow_id=flow_id)) == {
        dbos_queued,
        kafka_queued,
    }
    assert await ids(ExecutionFilter(owner_id="bob")) == {bob}
    records = app.stores.executions.records
    middle = records[kafka_queued].created_at
    assert await ids(ExecutionFilter(created_before=middle)) == {dbos_queued, dbos_created}
    assert await ids(ExecutionFilter(created_after=middle + timedelta(microseconds=1))) <= {
        other_flow,
        bob,
    }


async def test_a_dry_run_changes_nothing_and_says_what_would_be_done() -> None:
    app = app_with()
    ids = [await make(app, Track.DBOS, start=True) for _ in range(3)]
    result = await app.bulk.stop(
        ExecutionFilter(track=Track.DBOS), reason="r", requested_by="ops", dry_run=True
    )
    assert result.dry_run
    assert result.operation_id is None
    assert {i: r.outcome for i, r in result.results.items()} == dict.fromkeys(
        ids, Outcome.WOULD_STOP
    )
    assert all(stops(app, i) == 0 for i in ids)
    assert app.bulk_store.operations == {}


async def test_stop_by_filter_answers_per_id_and_a_replayed_operation_acts_on_nothing_again() -> (
    None
):
    app = app_with()
    queued = await make(app, Track.DBOS, start=True)
    running = await make(app, Track.DBOS, start=True)
    await claimed(app, running)
    finished = await make(app, Track.DBOS)
    await app.executions.transition(finished, _S.FAILED)
    kafka = await make(app, Track.KAFKA, start=True)

    where = ExecutionFilter(track=Track.DBOS)
    first = await app.bulk.stop(
        where, reason="incident 42", requested_by="ops", dry_run=False, operation_id="op-1"
    )
    assert (first.operation_id, first.replayed) == ("op-1", False)
    assert set(first.results) == {queued, running}  # a finished one is not selected
    assert first.results[queued].outcome is Outcome.STOPPED
    assert first.results[queued].detail == "now stopped"
    assert first.results[running].outcome is Outcome.STOPPED
    assert "stop sent to its worker" in str(first.results[running].detail)
    assert app.stores.executions.records[kafka].status is _S.QUEUED

    # Sent again (a retry after a timeout): the recorded answer, nothing stopped twice, even
    # though the running one is still unfinished and matches the filter.
    again = await app.bulk.stop(
        where, reason="incident 42", requested_by="ops", dry_run=False, operation_id="op-1"
    )
    assert again.replayed
    assert again.results == first.results
    assert stops(app, queued) == 1
    assert stops(app, running) == 1

    with pytest.raises(OperationIdReused):
        await app.bulk.stop(
            ExecutionFilter(track=Track.KAFKA),
            reason="incident 42",
            requested_by="ops",
            dry_run=False,
            operation_id="op-1",
        )


async def test_concurrent_retries_of_one_operation_act_on_each_execution_once() -> None:
    app = app_with()
    ids = [await make(app, Track.DBOS, start=True) for _ in range(6)]
    where = ExecutionFilter(track=Track.DBOS)
    results = await asyncio.gather(
        *(
            app.bulk.stop(where, reason="r", requested_by="ops", dry_run=False, operation_id="op")
            for _ in range(3)
        )
    )
    assert all(set(r.results) == set(ids) for r in results)
    taken = [execution_id for _, execution_id in app.bulk_store.taken]
    assert sorted(taken) == sorted(ids)
    assert all(stops(app, i) == 1 for i in ids)


async def test_an_operation_acts_on_at_most_bulk_max_ids_reading_page_by_page() -> None:
    app = app_with(bulk_max_ids=5, bulk_page_size=2)
    ids = [await make(app, Track.DBOS, start=True) for _ in range(7)]
    where = ExecutionFilter(track=Track.DBOS)
    preview = await app.bulk.stop(where, reason="r", requested_by="ops", dry_run=True)
    assert (len(preview.results), preview.truncated) == (5, True)
    done = await app.bulk.stop(where, reason="r", requested_by="ops", dry_run=False)
    assert list(done.results) == ids[:5]  # oldest first
    assert done.truncated
    rest = await app.bulk.stop(where, reason="r", requested_by="ops", dry_run=False)
    assert (list(rest.results), rest.truncated) == (ids[5:], False)
    assert done.operation_id != rest.operation_id


async def test_reroute_by_filter_moves_with_the_reroute_rules_and_audit() -> None:
    app = app_with()
    flow_id = await new_flow(app)
    mine = await make(app, Track.DBOS, flow_id=flow_id, start=True)
    other = await make(app, Track.DBOS, start=True)
    running = await make(app, Track.DBOS, flow_id=flow_id, start=True)
    await claimed(app, running)

    result = await app.bulk.reroute(
        ExecutionFilter(flow_id=flow_id), to=Track.KAFKA, requested_by="ops", dry_run=False
    )
    assert {i: r.outcome for i, r in result.results.items()} == {mine: Outcome.MOVED}
    records = app.stores.executions.records
    assert (records[mine].track, records[other].track) == (Track.KAFKA, Track.DBOS)
    assert records[running].track is Track.DBOS
    assert [r.reason for r in app.recovery.audit.of(mine)] == [Reason.REROUTED]
    assert app.ports.queues[Track.KAFKA].enqueued == [(mine, 1)]
    replay = await app.bulk.reroute(
        ExecutionFilter(flow_id=flow_id),
        to=Track.KAFKA,
        requested_by="ops",
        dry_run=False,
        operation_id=result.operation_id,
    )
    assert replay.replayed
    assert replay.results == result.results
    assert app.ports.queues[Track.KAFKA].enqueued == [(mine, 1)]


async def test_a_filter_that_cannot_select_anything_sensible_is_refused() -> None:
    app = app_with()
    with pytest.raises(InvalidBulkRequest, match="cannot be rerouted"):
        await app.bulk.reroute(
            ExecutionFilter(track=Track.KAFKA), to=Track.KAFKA, requested_by="o", dry_run=True
        )
    with pytest.raises(InvalidBulkRequest, match="unstarted"):
        await app.bulk.reroute(
            ExecutionFilter(statuses=(_S.RUNNING,)), to=Track.KAFKA, requested_by="o", dry_run=True
        )
    with pytest.raises(InvalidBulkRequest, match="unfinished"):
        await app.bulk.stop(
            ExecutionFilter(statuses=(_S.COMPLETED,)), reason="r", requested_by="o", dry_run=True
        )


async def test_a_reroute_dry_run_leaves_out_what_the_hold_back_rules_keep() -> None:
    app = app_with()
    plain = await make(app, Track.DBOS)
    streams = await app.executions.create(
        owner_id=OWNER,
        flow_id=await new_flow(app),
        flow_version=1,
        track=Track.DBOS,
        events_backend=EventsBackend.DBOS,
    )
    held = await app.bulk.reroute(
        ExecutionFilter(),
        to=Track.KAFKA,
        requested_by="o",
        dry_run=True,
        include_dbos_streams=False,
    )
    assert set(held.results) == {plain}
    everything = await app.bulk.reroute(
        ExecutionFilter(), to=Track.KAFKA, requested_by="o", dry_run=False
    )
    assert set(everything.results) == {plain, streams.id}
    # Having left DBOS, neither goes back there: the rule keeps them out of the selection.
    back = await app.bulk.reroute(ExecutionFilter(), to=Track.DBOS, requested_by="o", dry_run=True)
    assert back.results == {}
