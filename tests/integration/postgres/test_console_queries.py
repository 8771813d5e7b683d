"""The console's Tracks figures on real PostgreSQL: counts, throughput, error rate and the
create→completed quantiles over the window, from rows whose timestamps the test sets.

The owner is unique per test (the database is shared), and the owner scope is what is checked:
another owner's rows and shadow runs must not count.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres import PostgresExecutionStore, PostgresFlowStore
from twintrack.adapters.postgres.console_queries import ConsoleQueries
from twintrack.domain.execution import EventsBackend, ExecutionStatus, Track

pytestmark = pytest.mark.integration

S = ExecutionStatus
Sessions = async_sessionmaker[AsyncSession]
DEFINITION: dict[str, Any] = {
    "name": "one",
    "nodes": [{"id": "a", "type": "const", "config": {"value": 1}}],
    "edges": [],
}
# (status, seconds before now it finished or None, create→finish in ms, created seconds ago)
ROWS = [
    (S.COMPLETED, 60, 100, None),
    (S.COMPLETED, 60, 200, None),
    (S.COMPLETED, 60, 400, None),
    (S.FAILED, 30, 50, None),
    (S.STOPPED, 600, 10, None),  # outside a 5 minute window
    (S.CREATED, None, None, 120),  # unfinished, two minutes old
]


async def _execution(
    sessions: Sessions, owner: str, status: S, done_s: int | None, ms: int | None, age: int | None
) -> str:
    flows, executions = PostgresFlowStore(sessions), PostgresExecutionStore(sessions)
    flow_id = (await flows.create(owner, "f", DEFINITION)).id
    record = await executions.create(
        owner_id=owner,
        flow_id=flow_id,
        flow_version=1,
        track=Track.KAFKA,
        events_backend=EventsBackend.KAFKA,
    )
    finished = "now() - make_interval(secs => :done)" if done_s is not None else "NULL"
    created = (
        "now() - make_interval(secs => :done + :ms / 1000.0)"
        if done_s is not None
        else "now() - make_interval(secs => :age)"
    )
    async with sessions() as session, session.begin():
        await session.execute(
            text(
                f"UPDATE executions SET status = :status, created_at = {created},"
                f" finished_at = {finished} WHERE id = :id"
            ),
            {"status": status.value, "done": done_s, "ms": ms, "age": age, "id": record.id},
        )
    return record.id


async def test_track_health_over_the_window(session_factory: Sessions) -> None:
    owner, other = f"th-{uuid.uuid4().hex[:8]}", f"th-{uuid.uuid4().hex[:8]}"
    for row in ROWS:
        await _execution(session_factory, owner, *row)
    await _execution(session_factory, other, S.FAILED, 10, 5000, None)
    shadow = await _execution(session_factory, owner, S.FAILED, 10, 9000, None)
    async with session_factory() as session, session.begin():
        await session.execute(
            text("UPDATE executions SET shadow_of = id WHERE id = :id"), {"id": shadow}
        )

    health = await ConsoleQueries(session_factory).track_health(owner, 300.0)

    kafka = health[Track.KAFKA]
    assert kafka.finished == {S.COMPLETED: 3, S.FAILED: 1}
    assert kafka.throughput_per_s == pytest.approx(4 / 300)
    assert kafka.error_rate == pytest.approx(0.25)
    assert kafka.p50_ms == pytest.approx(200, abs=1)
    assert kafka.p99_ms == pytest.approx(396, abs=1)  # 200 + 0.98 * (400 - 200), interpolated
    assert kafka.unfinished == {S.CREATED: 1}
    assert not kafka.drained
    assert kafka.oldest_unfinished_age_s == pytest.approx(120, abs=10)
    dbos = health[Track.DBOS]
    assert dbos.drained
    assert dbos.finished == {}
    assert dbos.p50_ms is None
    assert dbos.error_rate is None

    wider = (await ConsoleQueries(session_factory).track_health(owner, 900.0))[Track.KAFKA]
    assert wider.finished == {S.COMPLETED: 3, S.FAILED: 1, S.STOPPED: 1}
    assert wider.error_rate == pytest.approx(0.2)  # a stop is not an error
