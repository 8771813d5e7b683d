"""The claim store on a real PostgreSQL: the lease and fencing rules both tracks' workers rely on,
through the one-statement claim and move (adapters/postgres/claim_statements.py) and the general
transaction they fall back to."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres import (
    NotFound,
    PostgresExecutionStore,
    PostgresFlowStore,
    UnexpectedStatus,
)
from twintrack.adapters.postgres.claims import PostgresClaimStore
from twintrack.adapters.postgres.recovery import RELEASED
from twintrack.core.records import Claim, ExecutionRecord
from twintrack.domain.execution import EventsBackend, ExecutionStatus, IllegalTransition, Track

pytestmark = pytest.mark.integration

S = ExecutionStatus
Sessions = async_sessionmaker[AsyncSession]
DEFINITION: dict[str, Any] = {
    "name": "hello",
    "nodes": [{"id": "a", "type": "const", "config": {"value": 1}}],
    "edges": [],
}


@pytest.fixture
def executions(session_factory: Sessions) -> PostgresExecutionStore:
    return PostgresExecutionStore(session_factory)


@pytest.fixture
def claims(session_factory: Sessions, executions: PostgresExecutionStore) -> PostgresClaimStore:
    return PostgresClaimStore(session_factory, executions)


async def _queued(
    session_factory: Sessions, executions: PostgresExecutionStore, track: Track = Track.KAFKA
) -> ExecutionRecord:
    flow = await PostgresFlowStore(session_factory).create("alice", "f", DEFINITION)
    ex = await executions.create(
        owner_id="alice",
        flow_id=flow.id,
        flow_version=1,
        track=track,
        events_backend=EventsBackend.KAFKA,
    )
    return await executions.transition(ex.id, S.QUEUED)


async def _claim(claims: PostgresClaimStore, ex: str, worker: str) -> Claim:
    taken = await claims.claim(ex, worker, 30, track=Track.KAFKA)
    assert taken is not None
    return taken[0]


async def test_a_claim_leases_a_queued_execution_and_counts_the_attempt(
    session_factory: Sessions, executions: PostgresExecutionStore, claims: PostgresClaimStore
) -> None:
    ex = await _queued(session_factory, executions)

    taken = await claims.claim(ex.id, "w-a", 30, track=Track.KAFKA)

    assert taken is not None
    claim, record = taken
    assert (claim.execution_id, claim.worker_id, claim.generation) == (ex.id, "w-a", 1)
    assert (record.status, record.attempt) == (S.RUNNING, 1)
    assert record.started_at is not None
    assert record.queued_at == ex.queued_at
    assert record == await executions.get(ex.id)
    assert claim.expires_at > record.started_at
    assert await claims.held_by("w-a") == [ex.id]


async def test_what_is_not_queued_on_the_callers_track_is_not_taken(
    session_factory: Sessions, executions: PostgresExecutionStore, claims: PostgresClaimStore
) -> None:
    ex = await _queued(session_factory, executions, track=Track.DBOS)
    assert await claims.claim(ex.id, "w-a", 30, track=Track.KAFKA) is None  # rerouted away
    await _claim_dbos(claims, ex.id)
    assert await claims.claim(ex.id, "w-b", 30, track=Track.DBOS) is None  # running already
    with pytest.raises(NotFound):
        await claims.claim("ex_missing", "w-a", 30, track=Track.KAFKA)
    assert (await executions.get(ex.id)).attempt == 1


async def _claim_dbos(claims: PostgresClaimStore, ex: str) -> None:
    assert await claims.claim(ex, "w-a", 30, track=Track.DBOS) is not None


async def test_racing_claims_have_one_winner(
    session_factory: Sessions, executions: PostgresExecutionStore, claims: PostgresClaimStore
) -> None:
    ex = await _queued(session_factory, executions)

    results = await asyncio.gather(
        *(claims.claim(ex.id, f"w-{i}", 30, track=Track.KAFKA) for i in range(12))
    )

    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert (await executions.get(ex.id)).attempt == 1


async def test_a_requeued_execution_is_claimed_again_under_a_new_generation(
    session_factory: Sessions, executions: PostgresExecutionStore, claims: PostgresClaimStore
) -> None:
    ex = await _queued(session_factory, executions)
    first = await _claim(claims, ex.id, "w-a")
    assert await claims.hand_back(first) is not None

    second = await _claim(claims, ex.id, "w-b")

    assert second.generation == first.generation + 1
    assert (await executions.get(ex.id)).attempt == 2
    # The old holder is fenced out: its moves are refused and change nothing.
    assert await claims.transition(first, S.COMPLETED, release=True) is None
    assert (await executions.get(ex.id)).status == S.RUNNING


async def test_a_live_lease_of_another_worker_is_not_taken(
    session_factory: Sessions, executions: PostgresExecutionStore, claims: PostgresClaimStore
) -> None:
    ex = await _queued(session_factory, executions)
    held = await _claim(claims, ex.id, "w-a")
    # Put the row back to queued while w-a's lease lives (a duplicate delivery racing a requeue).
    await executions.transition(ex.id, S.QUEUED, expected={S.RUNNING})

    assert await claims.claim(ex.id, "w-b", 30, track=Track.KAFKA) is None
    assert (await executions.get(ex.id)).status == S.QUEUED
    again = await _claim(claims, ex.id, "w-a")  # its own holder may take it again
    assert again.generation == held.generation + 1


async def test_the_finishing_move_stores_the_outcome_and_ends_the_lease(
    session_factory: Sessions, executions: PostgresExecutionStore, claims: PostgresClaimStore
) -> None:
    ex = await _queued(session_factory, executions)
    claim = await _claim(claims, ex.id, "w-a")
    assert await claims.transition(claim, S.PAUSED, expected={S.RUNNING}) is not None
    assert await claims.transition(claim, S.RUNNING, expected={S.PAUSED}) is not None

    done = await claims.transition(
        claim,
        S.FAILED,
        release=True,
        outputs={"a": {"value": [1, "two", None]}},
        error_message="boom",
        error_node_id="a",
        next_event_index=7,
    )

    assert done is not None
    assert (done.status, done.attempt, done.next_event_index) == (S.FAILED, 1, 7)
    assert done.outputs == {"a": {"value": [1, "two", None]}}
    assert (done.error_message, done.error_node_id) == ("boom", "a")
    assert done.finished_at is not None
    assert done == await executions.get(ex.id)
    assert await claims.held_by("w-a") == []
    assert await claims.held_by(RELEASED) == [ex.id]
    assert await claims.transition(claim, S.COMPLETED) is None  # released: no longer held


async def test_a_move_the_state_machine_refuses_is_explained_and_changes_nothing(
    session_factory: Sessions, executions: PostgresExecutionStore, claims: PostgresClaimStore
) -> None:
    ex = await _queued(session_factory, executions)
    claim = await _claim(claims, ex.id, "w-a")
    before = await executions.get(ex.id)

    with pytest.raises(UnexpectedStatus):
        await claims.transition(claim, S.RUNNING, expected={S.PAUSED})
    with pytest.raises(IllegalTransition):
        await claims.transition(claim, S.CREATED)

    assert await executions.get(ex.id) == before
    assert await claims.held_by("w-a") == [ex.id]


async def test_an_event_index_never_goes_down_through_a_move(
    session_factory: Sessions, executions: PostgresExecutionStore, claims: PostgresClaimStore
) -> None:
    ex = await _queued(session_factory, executions)
    claim = await _claim(claims, ex.id, "w-a")
    await executions.advance_event_index(ex.id, 9)

    done = await claims.transition(claim, S.COMPLETED, release=True, next_event_index=4)

    assert done is not None
    assert done.next_event_index == 9
