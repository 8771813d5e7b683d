"""Bulk operations and the fallback on PostgreSQL: the bulk store's filter query pages oldest
first, an operation id keeps one operation, concurrent takes of one execution give it to one
taker only; a new row falls back to Kafka only while `created`; and the guard's window counts
executions that fell back in it as DBOS failures."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres import PostgresExecutionStore, PostgresFlowStore
from twintrack.adapters.postgres.bulk import PostgresBulkStore
from twintrack.adapters.postgres.rollout import PostgresGuardStore
from twintrack.core.bulk import BulkAction, ExecutionFilter, ItemResult, Outcome
from twintrack.core.errors import UnexpectedStatus
from twintrack.core.recovery_ports import HoldBack
from twintrack.domain.execution import EventsBackend, ExecutionStatus, Track

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]


async def _executions(sessions: Sessions, n: int, track: Track = Track.DBOS) -> list[str]:
    flow = await PostgresFlowStore(sessions).create("o", "f", {"name": "f", "nodes": []})
    store = PostgresExecutionStore(sessions)
    ids = []
    for _ in range(n):
        record = await store.create(
            owner_id="o",
            flow_id=flow.id,
            flow_version=flow.version,
            track=track,
            events_backend=EventsBackend.DBOS,
        )
        ids.append(record.id)
    return ids


async def test_the_filter_pages_oldest_first_and_one_taker_gets_each_execution(
    session_factory: Sessions,
) -> None:
    ids = await _executions(session_factory, 5)
    kafka = await _executions(session_factory, 1, Track.KAFKA)
    store = PostgresBulkStore(session_factory)
    where = ExecutionFilter(track=Track.DBOS, statuses=(ExecutionStatus.CREATED,))
    first = await store.matching(where, after=None, limit=3)
    rest = await store.matching(where, after=first[-1], limit=3)
    assert [c.execution_id for c in first + rest] == ids
    assert await store.matching(ExecutionFilter(owner_id="nobody"), after=None, limit=9) == []
    # Their events are in DBOS streams: a reroute holding those back selects none of them.
    kept = replace(where, excluding=HoldBack.DBOS_STREAMS)
    assert await store.matching(kept, after=None, limit=9) == []
    later = ExecutionFilter(created_after=first[-1].created_at + timedelta(microseconds=1))
    assert {c.execution_id for c in await store.matching(later, after=None, limit=9)} == {
        *ids[3:],
        *kafka,
    }

    begun = await store.begin("op", BulkAction.STOP, "h", {"x": 1}, "ops")
    assert begun.created
    again = await store.begin("op", BulkAction.STOP, "other", {"x": 2}, "ops")
    assert (again.created, again.request_hash) == (False, "h")
    takes = await asyncio.gather(*(store.take("op", ids) for _ in range(4)))
    assert sorted(i for taken in takes for i in taken) == sorted(ids)
    await store.settle("op", ids[0], ItemResult(Outcome.STOPPED, "now stopped"))
    await store.finish("op", truncated=True)
    loaded = await store.load("op")
    assert loaded is not None
    assert (loaded.finished, loaded.truncated) == (True, True)
    assert list(loaded.results) == ids
    assert loaded.results[ids[0]] == ItemResult(Outcome.STOPPED, "now stopped")
    assert loaded.results[ids[1]] == ItemResult(Outcome.PENDING)


async def test_a_new_row_falls_back_to_kafka_and_the_guard_counts_it_for_dbos(
    session_factory: Sessions,
) -> None:
    (ex,) = await _executions(session_factory, 1)
    executions = PostgresExecutionStore(session_factory)
    moved = await executions.fall_back(ex, "DBOS refused the workflow")
    assert (moved.track, moved.events_backend, moved.fallback_reason) == (
        Track.KAFKA,
        EventsBackend.KAFKA,
        "DBOS refused the workflow",
    )
    assert (await executions.get(ex)).fallback_reason == "DBOS refused the workflow"
    window = await PostgresGuardStore(session_factory).figures(window_s=60, stuck_after_s=300)
    assert window.cohorts[Track.DBOS].fallbacks == 1
    assert window.cohorts[Track.DBOS].error_rate == 1.0
    await executions.transition(ex, ExecutionStatus.QUEUED)
    with pytest.raises(UnexpectedStatus):
        await executions.fall_back(ex, "again")
