"""The live rollout (core/live_rollout.py) on the memory adapters: seeded from the settings,
changed with who and why, followed by the service without a restart, never undone by an older
state."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.core.support import OWNER, SUM, app_with
from twintrack.core.live_rollout import InvalidRolloutChange, RolloutChange, set_rollout
from twintrack.core.rollout import rollout_overview
from twintrack.domain.execution import EventsBackend, Track
from twintrack.domain.rollout import TrackPhase, owner_bucket


async def wait_for(condition: object, timeout: float = 2.0) -> None:
    """Poll a zero-argument predicate until true or fail after `timeout` (no fixed sleep)."""
    assert callable(condition)
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (a plain predicate, no event to await)
            await asyncio.sleep(0.005)


async def test_the_settings_seed_the_first_state_and_a_change_reaches_the_service() -> None:
    app = app_with(dbos_rollout_percent=0)
    await app.start()
    try:
        state = await app.rollout_store.load()
        assert state is not None
        assert (state.version, state.changed_by) == (1, "environment")
        assert app.service.route(OWNER) is Track.KAFKA

        new = await set_rollout(
            app.rollout_store,
            RolloutChange(rollout_percent=100),
            changed_by="ops",
            reason="canary went well",
        )
        assert new.version == 2
        await wait_for(lambda: app.service.route(OWNER) is Track.DBOS)
        flow = await app.flows.create(OWNER, "f", SUM)
        created = await app.service.create(OWNER, flow.id)
        assert created.track is Track.DBOS

        overview = await rollout_overview(app.rollout_store, app.reroutes)
        assert [h.reason for h in overview.history] == [
            "canary went well",
            "initial state from the environment",
        ]
        assert overview.phases == {Track.KAFKA: TrackPhase.DRAINED, Track.DBOS: TrackPhase.ACTIVE}
    finally:
        await app.close()


async def test_raising_the_percent_only_adds_owners() -> None:
    app = app_with(dbos_rollout_percent=10)
    await app.start()
    try:
        owners = [f"owner-{i}" for i in range(300)]
        before = {o for o in owners if app.service.route(o) is Track.DBOS}
        await set_rollout(
            app.rollout_store, RolloutChange(rollout_percent=40), changed_by="ops", reason="up"
        )
        await wait_for(lambda: app.service.policy.rollout_percent == 40)
        after = {o for o in owners if app.service.route(o) is Track.DBOS}
        assert before < after
        assert after == {o for o in owners if owner_bucket(o) < 40}
    finally:
        await app.close()


async def test_an_older_state_never_replaces_a_newer_one() -> None:
    app = app_with()
    await app.start()
    try:
        first = await app.rollout_store.load()
        assert first is not None
        second = await app.rollout_store.change(
            RolloutChange(enable_dbos=True, events_backend=EventsBackend.DBOS),
            changed_by="ops",
            reason="all in",
        )
        assert app.rollout.apply(second) or app.rollout.version == second.version
        assert not app.rollout.apply(first)
        assert app.service.policy.events_backend is EventsBackend.DBOS
    finally:
        await app.close()


@pytest.mark.parametrize(
    ("change", "reason", "message"),
    [
        (RolloutChange(rollout_percent=101), "r", "0-100"),
        (RolloutChange(rollout_percent=5), "  ", "reason"),
        (RolloutChange(), "r", "nothing to change"),
    ],
)
async def test_a_change_that_does_not_fit_is_refused(
    change: RolloutChange, reason: str, message: str
) -> None:
    app = app_with()
    await app.start()
    try:
        with pytest.raises(InvalidRolloutChange, match=message):
            await set_rollout(app.rollout_store, change, changed_by="ops", reason=reason)
        assert len(await app.rollout_store.history()) == 1
    finally:
        await app.close()
