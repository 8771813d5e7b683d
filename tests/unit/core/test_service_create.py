"""Creating an execution: where it goes, what it checks, what its stream starts with."""

from __future__ import annotations

import pytest

from tests.unit.core.support import OWNER, SUM, app_with, enqueued, new_flow, settings, types_of
from twintrack.adapters.memory import MemoryPorts
from twintrack.bootstrap import MemoryContainer, in_memory
from twintrack.core.errors import NotFound
from twintrack.core.service import TrackUnavailable
from twintrack.domain.execution import (
    EventsBackend,
    ExecutionOptions,
    ExecutionStatus,
    Track,
    TriggerEvent,
)
from twintrack.domain.flow import FlowValidationError
from twintrack.domain.rollout import owner_bucket
from twintrack.engine import EventTooLarge


async def test_a_new_execution_is_created_with_its_created_event_and_no_task(
    app: MemoryContainer,
) -> None:
    flow_id = await new_flow(app)
    record = await app.service.create(OWNER, flow_id)
    assert (record.status, record.track, record.events_backend) == (
        ExecutionStatus.CREATED,
        Track.KAFKA,
        EventsBackend.KAFKA,
    )
    assert (record.flow_version, record.depth, record.root_id) == (1, 0, record.id)
    assert types_of(app, record.id) == ["execution.created"]
    assert record.next_event_index == 1
    assert app.ports.queues[Track.KAFKA].prepared == [record.id]
    assert enqueued(app) == []  # nothing holds a queue slot before start


async def test_the_rollout_percent_routes_a_sticky_cohort_of_owners() -> None:
    app = app_with(dbos_rollout_percent=50)
    owners = [f"owner-{i}" for i in range(40)]
    tracks = {}
    for owner in owners:
        flow_id = await new_flow(app, owner=owner)
        first = await app.service.create(owner, flow_id)
        again = await app.service.create(owner, flow_id)
        assert first.track is again.track  # sticky per owner
        tracks[owner] = first.track
    assert tracks == {o: Track.DBOS if owner_bucket(o) < 50 else Track.KAFKA for o in owners}
    assert set(tracks.values()) == {Track.KAFKA, Track.DBOS}


@pytest.mark.parametrize(
    ("enable", "percent", "expected"),
    [(True, None, Track.DBOS), (False, None, Track.KAFKA), (True, 0, Track.KAFKA)],
)
async def test_the_flag_routes_unless_a_percent_overrides_it(
    enable: bool, percent: int | None, expected: Track
) -> None:
    app = app_with(enable_dbos_execution=enable, dbos_rollout_percent=percent)
    record = await app.service.create(OWNER, await new_flow(app))
    assert record.track is expected


async def test_the_events_backend_setting_applies_to_the_dbos_track_only() -> None:
    app = app_with(execution_events_backend="dbos", enable_dbos_execution=True)
    flow_id = await new_flow(app)
    on_dbos = await app.service.create(OWNER, flow_id, track=Track.DBOS)
    on_kafka = await app.service.create(OWNER, flow_id, track=Track.KAFKA)
    assert on_dbos.events_backend is EventsBackend.DBOS
    assert on_kafka.events_backend is EventsBackend.KAFKA
    assert app.ports.buses[EventsBackend.DBOS].of(on_dbos.id)[0].index == 0


async def test_options_must_fit_the_flow(app: MemoryContainer) -> None:
    flow_id = await new_flow(app)
    with pytest.raises(FlowValidationError) as refused:
        await app.service.create(
            OWNER, flow_id, options=ExecutionOptions(breakpoints=["nope"], inputs={"add": 1})
        )
    assert [i.location for i in refused.value.issues] == [
        "options.breakpoints[0]",
        "options.inputs.add",
    ]
    assert (await app.executions.list(OWNER)).items == []
    fine = await app.service.create(
        OWNER, flow_id, options=ExecutionOptions(breakpoints=["add"], inputs={"x": 40})
    )
    assert fine.options.inputs == {"x": 40}


async def test_an_unknown_flow_or_version_or_another_owners_flow_is_not_found(
    app: MemoryContainer,
) -> None:
    flow_id = await new_flow(app)
    with pytest.raises(NotFound):
        await app.service.create(OWNER, "fl_missing")
    with pytest.raises(NotFound):
        await app.service.create(OWNER, flow_id, version=2)
    with pytest.raises(NotFound):
        await app.service.create("mallory", flow_id)


async def test_a_pinned_version_stays_after_the_flow_is_updated(app: MemoryContainer) -> None:
    flow_id = await new_flow(app)
    assert await app.flows.update(OWNER, flow_id, "v2", SUM) == 2
    assert (await app.service.create(OWNER, flow_id)).flow_version == 2
    assert (await app.service.create(OWNER, flow_id, version=1)).flow_version == 1


async def test_trigger_events_too_large_are_refused_before_any_row() -> None:
    app = app_with(max_event_bytes=4096)
    flow_id = await new_flow(app)
    big = [TriggerEvent(name="go", payload="x" * 4096)]
    with pytest.raises(EventTooLarge):
        await app.service.create(OWNER, flow_id, events=big)
    assert (await app.executions.list(OWNER)).items == []
    small = await app.service.create(OWNER, flow_id, events=[TriggerEvent(name="go", payload=1)])
    created = app.ports.buses[EventsBackend.KAFKA].of(small.id)[0]
    assert created.data["events"] == [{"name": "go", "payload": 1}]


async def test_a_track_this_process_cannot_reach_is_unavailable() -> None:
    ports = MemoryPorts.only([Track.KAFKA], [EventsBackend.KAFKA])
    app = in_memory(settings(enable_dbos_execution=True), ports=ports)
    with pytest.raises(TrackUnavailable, match="dbos"):
        await app.service.create(OWNER, await new_flow(app))
    assert (await app.executions.list(OWNER)).items == []
