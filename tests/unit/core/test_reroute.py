"""Reroute and rollout status on the memory adapters: only unstarted executions move, each once,
with its delivery on the new track and an audit row; running, finished and already-moved ones
are left alone; DBOS-stream executions and ones that left DBOS are held back by rule."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.core.support import OWNER, claimed, new_flow, started
from twintrack.bootstrap import MemoryContainer
from twintrack.core.recovery_ports import Reason
from twintrack.core.rollout import (
    DBOS_STREAMS,
    LEFT_DBOS,
    ON_TRACK,
    RerouteReport,
    plan_reroute,
    reroute,
    rollout_status,
)
from twintrack.domain.execution import EventsBackend, ExecutionStatus, Track

_S = ExecutionStatus


async def move(app: MemoryContainer, to: Track, **options: Any) -> RerouteReport:
    return await reroute(app.service, app.recovery.reroutes, app.audit, to=to, **options)


async def on_track(
    app: MemoryContainer,
    track: Track,
    *,
    start: bool = False,
    events: EventsBackend = EventsBackend.KAFKA,
) -> str:
    """An execution created (and started) on `track`, whatever the rollout settings say."""
    record = await app.executions.create(
        owner_id=OWNER,
        flow_id=await new_flow(app),
        flow_version=1,
        track=track,
        events_backend=events,
    )
    if start:
        await app.executions.transition(record.id, _S.QUEUED)
    return record.id


def moved_ids(report: RerouteReport) -> set[str]:
    return {m.execution_id for m in report.moved}


async def test_only_unstarted_executions_move_each_with_its_delivery(
    app: MemoryContainer,
) -> None:
    created = await on_track(app, Track.KAFKA)
    queued = await on_track(app, Track.KAFKA, start=True)
    running = (await started(app, await new_flow(app))).id
    await claimed(app, running)
    finished = (await started(app, await new_flow(app))).id
    await app.executions.transition(finished, _S.FAILED)
    already = await on_track(app, Track.DBOS)

    report = await move(app, Track.DBOS)
    assert moved_ids(report) == {created, queued}
    assert report.skipped == report.failed == []
    for ex in (created, queued):
        assert (await app.executions.get(ex)).track is Track.DBOS
        assert [(r.reason, r.track) for r in app.recovery.audit.of(ex)] == [
            (Reason.REROUTED, Track.DBOS)
        ]
    dbos = app.ports.queues[Track.DBOS]
    assert created in dbos.prepared  # its workflow is made, parked until start
    assert dbos.enqueued == [(queued, 1)]
    for ex in (running, finished, already):
        assert app.recovery.audit.of(ex) == []
    assert (await app.executions.get(running)).track is Track.KAFKA


async def test_moving_off_dbos_cancels_the_old_workflow(app: MemoryContainer) -> None:
    queued = await on_track(app, Track.DBOS, start=True)
    created = await on_track(app, Track.DBOS)
    report = await move(app, Track.KAFKA)
    assert moved_ids(report) == {queued, created}
    assert app.ports.queues[Track.KAFKA].enqueued == [(queued, 1)]
    assert app.ports.queues[Track.DBOS].cancelled == [queued]  # a created one has no workflow yet


async def test_dbos_stream_executions_are_held_back_unless_included(
    app: MemoryContainer,
) -> None:
    streamed = await on_track(app, Track.DBOS, events=EventsBackend.DBOS)
    plain = await on_track(app, Track.DBOS)
    report = await move(app, Track.KAFKA, include_dbos_streams=False)
    assert moved_ids(report) == {plain}
    assert report.held_back == {DBOS_STREAMS: 1}
    assert (await app.executions.get(streamed)).track is Track.DBOS
    report = await move(app, Track.KAFKA)
    assert moved_ids(report) == {streamed}
    assert app.ports.queues[Track.DBOS].cancelled == [streamed]  # its stream stays readable


async def test_an_execution_that_left_dbos_never_goes_back(app: MemoryContainer) -> None:
    ex = await on_track(app, Track.DBOS)
    assert moved_ids(await move(app, Track.KAFKA)) == {ex}
    plan = await plan_reroute(app.recovery.reroutes, to=Track.DBOS)
    assert plan.moved == []
    assert plan.held_back == {LEFT_DBOS: 1}
    report = await move(app, Track.DBOS)
    assert report.moved == []
    assert report.held_back == {LEFT_DBOS: 1}
    assert (await app.executions.get(ex)).track is Track.KAFKA


async def test_two_reroutes_at_once_move_each_execution_once(app: MemoryContainer) -> None:
    ids = {await on_track(app, Track.DBOS, start=True) for _ in range(6)}
    first, second = await asyncio.gather(
        move(app, Track.KAFKA), move(app, Track.KAFKA, concurrency=2)
    )
    assert not moved_ids(first) & moved_ids(second)
    assert moved_ids(first) | moved_ids(second) == ids
    assert {s.reason for s in first.skipped + second.skipped} <= {ON_TRACK}
    assert sorted(ex for ex, _ in app.ports.queues[Track.KAFKA].enqueued) == sorted(ids)
    assert (await move(app, Track.KAFKA)).moved == []  # idempotent


async def test_a_move_whose_delivery_fails_changes_nothing(
    app: MemoryContainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = await on_track(app, Track.KAFKA, start=True)

    async def broker_down(*args: Any, **kwargs: Any) -> None:
        raise TimeoutError("broker unreachable")

    monkeypatch.setattr(app.ports.queues[Track.DBOS], "enqueue", broker_down)
    report = await move(app, Track.DBOS)
    assert [f.execution_id for f in report.failed] == [ex]
    assert report.moved == []
    assert (await app.executions.get(ex)).track is Track.KAFKA
    assert app.recovery.audit.of(ex) == []  # the audit row went with the failed move


async def test_a_dry_run_moves_nothing(app: MemoryContainer) -> None:
    ex = await on_track(app, Track.KAFKA)
    plan = await plan_reroute(app.recovery.reroutes, to=Track.DBOS, owner_id=OWNER, limit=5)
    assert plan.dry_run
    assert moved_ids(plan) == {ex}
    assert (await app.executions.get(ex)).track is Track.KAFKA
    assert app.recovery.audit.rows == []
    other_owner = await plan_reroute(app.recovery.reroutes, to=Track.DBOS, owner_id="bob")
    assert other_owner.moved == []


async def test_rollout_status_says_when_a_track_is_drained(app: MemoryContainer) -> None:
    ex = await on_track(app, Track.DBOS, start=True)
    await on_track(app, Track.KAFKA)
    status = await rollout_status(app.recovery.reroutes)
    dbos, kafka = status.tracks[Track.DBOS], status.tracks[Track.KAFKA]
    assert (dbos.counts[_S.QUEUED], dbos.drained) == (1, False)
    assert dbos.oldest_unfinished_age_s is not None
    assert dbos.oldest_unfinished_age_s >= 0
    assert (kafka.counts[_S.CREATED], kafka.drained) == (1, False)
    await app.executions.transition(ex, _S.STOPPED)
    status = await rollout_status(app.recovery.reroutes)
    assert status.tracks[Track.DBOS].drained
    assert status.tracks[Track.DBOS].counts[_S.STOPPED] == 1
    unfinished = await rollout_status(app.recovery.reroutes, include_finished=False)
    assert _S.STOPPED not in unfinished.tracks[Track.DBOS].counts
