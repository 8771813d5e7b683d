"""The live rollout's and the guard's Postgres adapters (adapters/postgres/rollout.py) on a real
server: seeding races to one state, changes are serialised with their history and NOTIFY, and
the guard's window figures come out of the executions table as the memory adapter computes them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres import PostgresExecutionStore, PostgresFlowStore
from twintrack.adapters.postgres.rollout import (
    PostgresGuardStore,
    PostgresRolloutFeed,
    PostgresRolloutStore,
)
from twintrack.core.guard import GuardVerdict, Verdict
from twintrack.core.live_rollout import RolloutChange, Switches
from twintrack.domain.execution import EventsBackend, ExecutionStatus, Track

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]
INITIAL = Switches(False, 5, EventsBackend.KAFKA)


async def test_concurrent_seeds_make_one_state_and_changes_are_serialised_with_history(
    session_factory: Sessions, database_url: str
) -> None:
    store = PostgresRolloutStore(session_factory)
    seeded = await asyncio.gather(
        *(store.seed(INITIAL, changed_by="environment", reason="seed") for _ in range(5))
    )
    assert {s.version for s in seeded} == {1}
    assert len(await store.history()) == 1

    feed = PostgresRolloutFeed(database_url)
    news = asyncio.Event()
    await feed.start(news.set)
    try:
        news.clear()  # the start's own catch-up call
        changes = await asyncio.gather(
            *(
                store.change(
                    RolloutChange(rollout_percent=p), changed_by=f"op{p}", reason=f"to {p}"
                )
                for p in (10, 20, 30, 40)
            )
        )
        async with asyncio.timeout(2):
            await news.wait()
    finally:
        await feed.close()
    assert sorted(c.version for c in changes) == [2, 3, 4, 5]
    history = await store.history()
    assert [h.version for h in history] == [5, 4, 3, 2, 1]
    latest = await store.load()
    assert latest is not None
    assert latest == history[0]
    assert latest.switches.rollout_percent == int(latest.reason.removeprefix("to "))
    cleared = await store.change(
        RolloutChange(rollout_percent=None, enable_dbos=True), changed_by="op", reason="flag"
    )
    assert (cleared.switches.rollout_percent, cleared.switches.dbos_share) == (None, 100)
    async with session_factory() as session:
        phases = (
            await session.execute(
                text("SELECT kafka_phase, dbos_phase FROM rollout_history ORDER BY id DESC")
            )
        ).first()
    assert tuple(phases or ()) == ("draining", "active")


async def _execution(
    executions: PostgresExecutionStore, flow: Any, track: Track, status: ExecutionStatus
) -> str:
    record = await executions.create(
        owner_id="o",
        flow_id=flow.id,
        flow_version=flow.version,
        track=track,
        events_backend=EventsBackend.KAFKA,
    )
    return record.id


async def test_the_guard_figures_count_the_window_and_the_stuck(
    session_factory: Sessions,
) -> None:
    flows = PostgresFlowStore(session_factory)
    executions = PostgresExecutionStore(session_factory)
    flow = await flows.create("o", "f", {"name": "f", "nodes": [], "edges": []})
    rows: dict[str, tuple[Track, str, float | None, float | None, str | None]] = {}
    # (track, status, finished this many seconds ago, created this long before finishing,
    # fallback_reason)
    plan = [
        (Track.DBOS, "failed", 1.0, 1.0, None),
        (Track.DBOS, "failed", 2.0, 1.0, None),
        (Track.DBOS, "completed", 3.0, 4.0, None),
        (Track.DBOS, "completed", 3600.0, 1.0, None),  # outside the window
        (Track.DBOS, "queued", None, None, None),  # stuck below
        (Track.KAFKA, "completed", 1.0, 1.0, None),
        (Track.KAFKA, "stopped", 1.0, 1.0, None),  # not an outcome
        # Routed to DBOS, created on Kafka: DBOS failures, never Kafka samples (not its
        # failures, its p99, its stuck).
        (Track.KAFKA, "failed", 1.0, 1.0, "DBOS client timeout"),
        (Track.KAFKA, "completed", 1.0, 30.0, "DBOS refused"),
        (Track.KAFKA, "queued", None, None, "DBOS schema behind"),  # created before the window
    ]
    for track, status, ago, took, why in plan:
        ex = await _execution(executions, flow, track, ExecutionStatus(status))
        rows[ex] = (track, status, ago, took, why)
    async with session_factory.begin() as session:
        for ex, (_, status, ago, took, why) in rows.items():
            if ago is None:
                await session.execute(
                    text(
                        "UPDATE executions SET status = :s, fallback_reason = :why,"
                        " queued_at = now() - interval '1 hour',"
                        " created_at = now() - interval '1 hour' WHERE id = :id"
                    ),
                    {"s": status, "why": why, "id": ex},
                )
                continue
            await session.execute(
                text(
                    "UPDATE executions SET status = :s, fallback_reason = :why,"
                    " finished_at = now() - make_interval(secs => :ago),"
                    " created_at = now() - make_interval(secs => :ago + :took) WHERE id = :id"
                ),
                {"s": status, "why": why, "ago": ago, "took": took, "id": ex},
            )
    store = PostgresGuardStore(session_factory)
    window = await store.figures(window_s=60, stuck_after_s=300)
    dbos, kafka = window.cohorts[Track.DBOS], window.cohorts[Track.KAFKA]
    assert (dbos.finished, dbos.failed, dbos.stuck, dbos.fallbacks) == (3, 2, 1, 2)
    assert dbos.p99_s == pytest.approx(4.0, abs=0.01)
    assert (kafka.finished, kafka.failed, kafka.stuck, kafka.fallbacks) == (1, 0, 0, 0)
    assert kafka.error_rate == 0.0
    assert kafka.p99_s == pytest.approx(1.0, abs=0.01)  # not the 30 s fallback

    recorded = await store.record(
        GuardVerdict(Verdict.FAIL, "why", 1, False, {"rollout_version": 3})
    )
    assert recorded.decided_at is not None
    (latest,) = await store.recent(1)
    assert (latest.verdict, latest.rollout_version) == (Verdict.FAIL, 3)
