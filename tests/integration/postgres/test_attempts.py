"""The give-up rule and the give-up itself, on a real PostgreSQL and broker (Kafka track, no
worker: the test plays the workers through the claim store, the sweeper is the real one)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.e2e import flows
from tests.e2e.conftest import MODES
from tests.e2e.stack import Stack, open_stack
from tests.faults.recovery_helpers import audits, claim_holder, env_for
from twintrack.core.records import Claim
from twintrack.core.recovery import RecoverySweeper, SweepPolicy
from twintrack.core.stores import ClaimStore as ClaimPort
from twintrack.domain.attempts import exhausted, failed_runs
from twintrack.domain.events import EventType
from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.tooling.embedded.discovery import ProvidedBroker

pytestmark = pytest.mark.integration


def test_one_rule_counts_failed_runs_not_handovers() -> None:
    assert failed_runs(attempt=3, handovers=1) == 2
    assert not exhausted(attempt=2, handovers=1, max_attempts=2)
    assert exhausted(attempt=2, handovers=0, max_attempts=2)
    assert exhausted(attempt=1, handovers=0, max_attempts=1)


@pytest_asyncio.fixture
async def stack(
    database_url: str,
    kafka_broker: ProvidedBroker,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    env = env_for(MODES["kafka"], database_url, kafka_broker, unique_name)
    async with open_stack(env, tmp_path, MAX_ATTEMPTS="2") as s:
        yield s


def _sweeper(stack: Stack, **policy: float) -> RecoverySweeper:
    c = stack.container
    return RecoverySweeper(
        service=c.service,
        store=c.recovery,
        audit=c.audit,
        kafka_queue=c.queues[Track.KAFKA],
        policy=SweepPolicy(max_attempts=2, **policy),  # type: ignore[arg-type]
    )


async def _started(stack: Stack) -> str:
    flow_id = await stack.api.create_flow(flows.three_nodes())
    ex = (await stack.api.create(flow_id))["id"]
    assert await stack.api.command(ex, "start") == 202
    return str(ex)


async def _run_on(stack: Stack, ex: str, worker: str) -> Claim:
    claims = stack.container.claims
    taken = await claims.claim(ex, worker, 30, track=Track.KAFKA)
    assert taken is not None
    return taken[0]


async def test_a_handover_spends_no_attempt(stack: Stack) -> None:
    claims = stack.container.claims
    sweeper = _sweeper(stack)
    ex = await _started(stack)
    assert await claims.hand_back(await _run_on(stack, ex, "w-a")) is not None  # attempt 1
    await _run_on(stack, ex, "w-b")  # attempt 2 dies: 1 failed run of 2
    await claims.expire_now(ex)
    assert (await sweeper.sweep()).requeued == [ex]
    await _run_on(stack, ex, "w-c")  # attempt 3 dies: 2 failed runs of 2
    await claims.expire_now(ex)
    assert (await sweeper.sweep()).gave_up == [ex]
    row = await stack.api.get(ex)
    assert row["status"] == "failed"
    assert row["attempt"] == 3
    assert row["error_message"] == (
        "gave up after 2 failed attempts (MAX_ATTEMPTS=2): attempt 3 on worker w-c stopped "
        "renewing its claim (lease expired)"
    )
    assert await claim_holder(stack, ex) == ""
    reasons = [(a.reason, a.previous_worker_id, a.attempt) for a in await audits(stack, ex)]
    assert reasons == [
        ("handover", "w-a", 1),
        ("expired_claim", "w-b", 2),
        ("max_attempts", "w-c", 3),
    ]
    events = await stack.api.events(ex)
    assert events[-1]["type"] == "execution.failed"
    assert events[-1]["data"]["error"]["message"] == row["error_message"]


async def test_the_give_up_quotes_the_failure_the_worker_saw(stack: Stack) -> None:
    claims = stack.container.claims
    attempts = stack.factory.attempts(stack.container, max_attempts=1)
    ex = await _started(stack)
    await _run_on(stack, ex, "w-a")
    crash = "attempt 1 on worker w-a crashed: RuntimeError: the disk is full"
    await attempts.run_failed(
        execution_id=ex, track=Track.KAFKA, worker_id="w-a", attempt=1, detail=crash
    )
    assert not await attempts.give_up_if_exhausted(ex)  # its lease is still live
    await claims.expire_now(ex)
    assert await attempts.give_up_if_exhausted(ex)
    row = await stack.api.get(ex)
    assert row["error_message"] == f"gave up after 1 failed attempt (MAX_ATTEMPTS=1): {crash}"


async def test_a_give_up_that_cannot_commit_leaves_everything_for_the_next_sweep(
    stack: Stack,
) -> None:
    """The review's case: the claim must not be taken back by a give-up that then fails."""
    claims = stack.container.claims
    sweeper = _sweeper(stack)
    ex = await _started(stack)
    await _run_on(stack, ex, "w-a")
    await claims.expire_now(ex)
    await _run_on_expired_twice(stack, ex, claims)
    async with stack.container.db_engine.begin() as conn:
        for statement in _REFUSE_FAILED:
            await conn.execute(text(statement.format(ex=ex)))
    with pytest.raises((DBAPIError, asyncpg.PostgresError), match="refused by the test"):
        await sweeper.sweep()
    assert await claim_holder(stack, ex) == "w-b"  # not taken back
    assert (await stack.api.get(ex))["status"] == "running"
    assert "max_attempts" not in [a.reason for a in await audits(stack, ex)]
    async with stack.container.db_engine.begin() as conn:
        await conn.execute(text("DROP TRIGGER refuse_failed ON executions"))
    assert (await sweeper.sweep()).gave_up == [ex]
    row = await stack.api.get(ex)
    assert row["status"] == "failed"
    assert await claim_holder(stack, ex) == ""
    events = await stack.api.events(ex)
    terminal = [e for e in events if EventType(e["type"]).is_terminal]
    assert len(terminal) == 1  # the event the failed try wrote stands; none is added
    assert terminal[0]["data"]["error"]["message"] == row["error_message"]


async def _run_on_expired_twice(stack: Stack, ex: str, claims: ClaimPort) -> None:
    """Attempt 1 expired (re-queued by the sweeper), attempt 2 on w-b expired too."""
    assert (await _sweeper(stack).sweep()).requeued == [ex]
    await _run_on(stack, ex, "w-b")
    await claims.expire_now(ex)


_REFUSE_FAILED = (
    "CREATE FUNCTION refuse_failed() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
    "CREATE TRIGGER refuse_failed BEFORE UPDATE ON executions FOR EACH ROW"
    " WHEN (NEW.id = '{ex}' AND NEW.status = 'failed') EXECUTE FUNCTION refuse_failed()",
)


async def test_stale_queued_executions_are_resent_a_batch_at_a_time(stack: Stack) -> None:
    sweeper = _sweeper(stack, batch=2, stale_queued_s=60.0)
    ids = [await _started(stack) for _ in range(3)]
    async with stack.container.db_engine.begin() as conn:
        for age, ex in enumerate(ids):  # the first is the oldest
            await conn.execute(
                text(
                    "UPDATE executions SET updated_at = now() - make_interval(hours => :h)"
                    " WHERE id = :id"
                ),
                {"h": 10 - age, "id": ex},
            )
    assert sorted((await sweeper.sweep()).resent) == sorted(ids[:2])  # the two oldest
    assert (await sweeper.sweep()).resent == ids[2:]
    assert (await sweeper.sweep()).resent == []
    for ex in ids:
        assert (await stack.api.get(ex))["status"] == ExecutionStatus.QUEUED.value
