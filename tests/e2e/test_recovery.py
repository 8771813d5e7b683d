"""Crashes, lost leases, start timeouts and poison tasks: nothing lost, nothing run twice."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy import func, select, text, update

from tests.e2e import flows
from tests.e2e.stack import Api, Stack, assert_contiguous, eventually, holder, open_stack
from tests.faults.recovery_helpers import audits
from twintrack.adapters.kafka.clients import make_consumer
from twintrack.adapters.postgres.tables import ExecutionClaimRow, WorkerRow
from twintrack.core.records import Claim
from twintrack.domain.execution import ExecutionStatus


async def _live_workers(stack: Stack) -> int:
    async with stack.container.sessions() as session:
        rows = await session.scalars(
            select(WorkerRow.worker_id).where(WorkerRow.stopped_at.is_(None))
        )
        return len(list(rows))


async def test_sigkilled_worker_execution_finishes_elsewhere_exactly_once(
    bare_stack: Stack,
) -> None:
    stack, api = bare_stack, bare_stack.api
    stack.spawn_worker_process("w1")
    stack.spawn_worker_process("w2")
    await eventually(lambda: _at_least(_live_workers(stack), 2), timeout=30)
    flow_id = await api.create_flow(flows.crashable(ms=3000))
    ex = (await api.create(flow_id))["id"]
    watching = api.watch(ex)
    await api.command(ex, "start")
    await api.node_event(ex, "node.started", "wait", timeout=20)  # mid-flow: after `before`
    killed = await eventually(lambda: holder(stack, ex))
    os.kill(killed[1], signal.SIGKILL)

    row = await api.wait_status(ex, {"completed", "failed"}, timeout=45)
    assert row["status"] == "completed", row
    assert row["attempt"] == 2
    assert row["outputs"] == {"after": 1}  # the node after the crash point ran once
    assert await stack.container.counters.get("before") == 2  # re-run from the start
    assert await stack.container.counters.get("after") == 1
    events = await watching
    assert_contiguous(events)
    retrying = [e for e in events if e["type"] == "execution.retrying"]
    assert [e["data"]["attempt"] for e in retrying] == [2]
    assert [e["type"] for e in events].count("execution.completed") == 1
    new_holder = [e for e in events if e["type"] == "execution.started"][-1]["data"]["worker_id"]
    assert new_holder != killed[0]
    reason = "dead_executor" if row["track"] == "dbos" else "expired_claim"
    assert [(a.reason, a.previous_worker_id, a.attempt) for a in await audits(stack, ex)] == [
        (reason, killed[0], 1)
    ]


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count >= n)


async def _run_out(stack: Stack, claim: Claim) -> None:
    """Expire this claim (this holder, this generation) now; a later claim is left alone."""
    async with stack.container.sessions.begin() as session:
        await session.execute(
            update(ExecutionClaimRow)
            .where(
                ExecutionClaimRow.execution_id == claim.execution_id,
                ExecutionClaimRow.worker_id == claim.worker_id,
                ExecutionClaimRow.generation == claim.generation,
            )
            .values(expires_at=func.now() - text("interval '1 second'"))
        )


async def test_a_worker_whose_lease_expired_cannot_write(kafka_stack: Stack) -> None:
    stack = kafka_stack
    api = stack.api
    flow_id = await api.create_flow(flows.chain(2, ms=1500))
    ex = (await api.create(flow_id))["id"]
    watching = api.watch(ex)
    await api.command(ex, "start")
    await api.wait_status(ex, "running")
    old = stack.workers[0].host.leases[ex].claim
    claims = stack.container.claims

    # The worker goes silent (its lease runs out) and its recovery sweeper hands the execution
    # on. A heartbeat landing before the sweep renews the lease, so it is run out again until
    # the sweep has taken it back. (A second sweep run here could deadlock with that one.)
    async def handed_on() -> list[str]:
        await _run_out(stack, old)
        return [a.reason for a in await audits(stack, ex)]

    assert await eventually(handed_on, timeout=10) == ["expired_claim"]
    # The old holder is fenced out: its writes are refused ...
    assert await claims.transition(old, ExecutionStatus.COMPLETED, outputs={"x": 1}) is None
    row = await api.wait_status(ex, "completed", timeout=20)
    # ... its engine stopped, and the execution completed once, on the new claim.
    assert row["attempt"] == 2
    assert row["outputs"] == {"done": None}
    events = await watching
    assert_contiguous(events)
    assert [e["type"] for e in events].count("execution.completed") == 1
    assert [e["data"]["attempt"] for e in events if e["type"] == "execution.retrying"] == [2]


async def test_root_not_started_in_time_fails_with_start_timeout(
    env: dict[str, str], logs: Path
) -> None:
    async with open_stack(env, logs, START_SIGNAL_TIMEOUT_S="1") as stack:
        await stack.add_worker()
        api = stack.api
        flow_id = await api.create_flow(flows.three_nodes())
        ex = (await api.create(flow_id))["id"]
        row = await api.wait_status(ex, "failed", timeout=10)
        assert row["error_message"] == "start timeout"
        events = await api.events(ex)
        assert_contiguous(events)
        assert [e["type"] for e in events] == ["execution.created", "execution.failed"]
        assert events[-1]["data"]["error"]["message"] == "start timeout"
        assert await api.command(ex, "start") == 409


async def test_poison_tasks_go_to_the_dead_letter_topic_and_the_worker_goes_on(
    kafka_stack: Stack,
) -> None:
    stack = kafka_stack
    config = stack.container.kafka
    assert config is not None
    producer = AIOKafkaProducer(bootstrap_servers=config.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(config.tasks_topic, key=b"junk", value=b"{not json")
        await producer.send_and_wait(
            config.tasks_topic, key=b"ghost", value=b'{"execution_id": "ex_ghost", "attempt": 1}'
        )
    finally:
        await producer.stop()
    consumer = make_consumer(config, config.dead_letter_topic, group_id=None)
    await consumer.start()
    letters: list[Any] = []
    try:
        async with asyncio.timeout(20):
            while len(letters) < 2:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    letters.extend(records)
    finally:
        await consumer.stop()
    reasons = {r.key: dict(r.headers)["reason"].decode() for r in letters}
    assert reasons[b"junk"].startswith("malformed task message")
    assert reasons[b"ghost"] == "unknown execution 'ex_ghost'"
    assert {r.value for r in letters} == {
        b"{not json",
        b'{"execution_id": "ex_ghost", "attempt": 1}',
    }
    # ... and the worker is still taking work.
    api: Api = stack.api
    ex = (await api.create(await api.create_flow(flows.three_nodes())))["id"]
    await api.command(ex, "start")
    assert (await api.wait_status(ex, "completed"))["outputs"] == {"answer": 42}
