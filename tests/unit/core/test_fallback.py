"""Kafka fallback at admission (core/service.py create) on the memory adapters: an execution
routed to DBOS that DBOS cannot admit is created on Kafka with its `fallback_reason` when the
rollout says so (DBOS_FALLBACK_TO_KAFKA, live), else refused; decided before
`execution.created`, so the stream never names a track the execution left."""

from __future__ import annotations

import pytest

from tests.unit.core.support import OWNER, app_with, events_of, new_flow
from twintrack.core.live_rollout import RolloutChange, set_rollout
from twintrack.core.ports import Refusal
from twintrack.core.service import TrackUnavailable
from twintrack.domain.execution import EventsBackend, Track
from twintrack.observability.metrics import REGISTRY

BEHIND = Refusal("schema_behind", "the DBOS system schema is at migration 3, this release needs 4")


def refusals(cause: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "twintrack_admission_refusals_total",
        {"track": "dbos", "cause": cause, "outcome": outcome},
    )
    return value or 0.0


async def test_dbos_admitted_goes_to_dbos_without_a_fallback_reason() -> None:
    app = app_with(enable_dbos_execution=True, dbos_fallback_to_kafka=True)
    record = await app.service.create(OWNER, await new_flow(app))
    assert (record.track, record.fallback_reason) == (Track.DBOS, None)
    assert app.ports.admission[Track.DBOS].checks == 1


async def test_refused_admission_falls_back_to_kafka_before_execution_created() -> None:
    app = app_with(enable_dbos_execution=True, dbos_fallback_to_kafka=True)
    await app.start()
    app.ports.admission[Track.DBOS].refusing = BEHIND
    before = refusals("schema_behind", "fallback")

    record = await app.service.create(OWNER, await new_flow(app))

    assert (record.track, record.events_backend) == (Track.KAFKA, EventsBackend.KAFKA)
    assert record.fallback_reason == BEHIND.message
    assert (await app.service.get(OWNER, record.id)).fallback_reason == BEHIND.message
    [created] = events_of(app, record.id)
    assert created.data["track"] == "kafka"
    assert created.data["fallback_reason"] == BEHIND.message
    assert app.ports.queues[Track.DBOS].prepared == []
    assert refusals("schema_behind", "fallback") == before + 1
    started = await app.service.start(OWNER, record.id)
    assert app.ports.queues[Track.KAFKA].enqueued == [(started.id, 1)]


async def test_without_the_fallback_a_refused_admission_is_a_clear_503_and_no_row() -> None:
    app = app_with(enable_dbos_execution=True)
    app.ports.admission[Track.DBOS].refusing = BEHIND
    before = refusals("schema_behind", "refused")
    with pytest.raises(TrackUnavailable, match=r"DBOS_FALLBACK_TO_KAFKA is off.*migration 3"):
        await app.service.create(OWNER, await new_flow(app))
    assert app.stores.executions.records == {}
    assert refusals("schema_behind", "refused") == before + 1


async def test_an_explicitly_chosen_dbos_track_is_refused_not_moved() -> None:
    app = app_with(dbos_fallback_to_kafka=True)
    app.ports.admission[Track.DBOS].refusing = BEHIND
    with pytest.raises(TrackUnavailable, match="the track was chosen"):
        await app.service.create(OWNER, await new_flow(app), track=Track.DBOS)


async def test_kafka_routed_executions_never_ask_dbos() -> None:
    app = app_with(dbos_fallback_to_kafka=True)
    app.ports.admission[Track.DBOS].refusing = BEHIND
    record = await app.service.create(OWNER, await new_flow(app))
    assert (record.track, record.fallback_reason) == (Track.KAFKA, None)
    assert app.ports.admission[Track.DBOS].checks == 0


async def test_a_workflow_dbos_refuses_at_creation_moves_the_new_row_to_kafka() -> None:
    """DBOS streams need the workflow made at creation: when DBOS refuses it, the row (nothing
    announced yet) moves to Kafka with Kafka events, and only Kafka's stream has the event."""
    app = app_with(
        enable_dbos_execution=True, execution_events_backend="dbos", dbos_fallback_to_kafka=True
    )
    app.ports.queues[Track.DBOS].refuse_prepare = ConnectionError("queue refused")
    record = await app.service.create(OWNER, await new_flow(app))
    assert (record.track, record.events_backend) == (Track.KAFKA, EventsBackend.KAFKA)
    assert record.fallback_reason is not None
    assert "DBOS refused the workflow: ConnectionError: queue refused" in record.fallback_reason
    assert [e.type.value for e in app.ports.buses[EventsBackend.KAFKA].of(record.id)] == [
        "execution.created"
    ]
    assert app.ports.buses[EventsBackend.DBOS].of(record.id) == []
    assert app.ports.queues[Track.DBOS].cancelled == [record.id]


async def test_a_refused_workflow_without_the_fallback_fails_the_create_as_before() -> None:
    app = app_with(enable_dbos_execution=True, execution_events_backend="dbos")
    app.ports.queues[Track.DBOS].refuse_prepare = ConnectionError("queue refused")
    with pytest.raises(ConnectionError):
        await app.service.create(OWNER, await new_flow(app))


async def test_the_fallback_is_a_live_rollout_switch() -> None:
    app = app_with(enable_dbos_execution=True)
    await app.start()
    app.ports.admission[Track.DBOS].refusing = BEHIND
    flow_id = await new_flow(app)
    with pytest.raises(TrackUnavailable):
        await app.service.create(OWNER, flow_id)
    state = await set_rollout(
        app.rollout_store,
        RolloutChange(fallback_to_kafka=True),
        changed_by="ops",
        reason="DBOS schema upgrade pending",
    )
    assert state.switches.fallback_to_kafka
    assert state.to_json()["fallback_to_kafka"] is True
    app.rollout.apply(state)  # as the API process that changed it does (others: the feed)
    assert app.service.policy.fallback_to_kafka
    assert (await app.service.create(OWNER, flow_id)).track is Track.KAFKA
