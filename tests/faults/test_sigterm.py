"""Worker SIGTERM mid-run (a rolling deploy), on every mode.

The worker stops taking work first (its Kafka consumer leaves the group, DBOS stops dequeuing),
lets runs finish within WORKER_SHUTDOWN_GRACE_S, and hands the rest over: each is `queued`
again with a `handover` audit row, and another worker runs it, exactly once. How the attempt is
counted for a handover: `attempt` counts runs started, so the run after the handover is attempt
2 (its stream continues with `execution.retrying {attempt: 2}`), but the handover is not a failed
run: failed runs = attempt - handovers = 0 after it, so the MAX_ATTEMPTS budget is untouched
(tests/integration/postgres/test_attempts.py proves a later failure is then not the last attempt).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import flows
from tests.e2e.conftest import MODES
from tests.e2e.stack import assert_contiguous, eventually, holder, open_stack
from tests.faults.recovery_helpers import audits, claim_holder, env_for, worker_id_of
from twintrack.tooling.embedded.discovery import ProvidedBroker

GRACE_S = 4
HANDOVER_S = 10  # from the end of the grace period to the run going on elsewhere, at most
# Nothing here waits for a lease to run out (a hand-over releases the claim), and with
# MAX_ATTEMPTS=1 a lease lost on a busy machine fails the run: the e2e stack's 3 s lease
# leaves its heartbeat 1 s of slack, this one 3 s.
CLAIM_TTL_S = 6


@pytest.fixture(params=list(MODES))
def fault_env(
    request: pytest.FixtureRequest,
    database_url: str,
    kafka_broker: ProvidedBroker,
    unique_name: Callable[[str], str],
) -> dict[str, str]:
    return env_for(MODES[request.param], database_url, kafka_broker, unique_name)


def _tallied(name: str, ms: int) -> dict[str, Any]:
    """crashable() with its own counter names, so short and long runs are told apart."""
    flow = flows.crashable(ms=ms)
    for node in flow["nodes"]:
        if node["type"] == "tally":
            node["config"]["name"] = f"{name}-{node['id']}"
    flow["name"] = name
    return flow


@pytest.mark.timeout(150)
async def test_sigterm_finishes_short_runs_and_hands_long_ones_over_without_an_attempt(
    fault_env: dict[str, str], tmp_path: Path
) -> None:
    async with open_stack(
        fault_env,
        tmp_path,
        MAX_ATTEMPTS="1",
        CLAIM_TTL_S=str(CLAIM_TTL_S),
        WORKER_SHUTDOWN_GRACE_S=str(GRACE_S),
        LOG_LEVEL="INFO",
    ) as stack:
        api = stack.api
        leaving = stack.spawn_worker_process("leaving")
        leaving_id = await worker_id_of(stack, leaving)
        short_flow = await api.create_flow(_tallied("short", ms=1500))
        long_flow = await api.create_flow(_tallied("long", ms=12_000))
        short = [(await api.create(short_flow))["id"] for _ in range(2)]
        long = [(await api.create(long_flow))["id"] for _ in range(2)]
        watching = {ex: api.watch(ex) for ex in short + long}
        for ex in short + long:
            await api.command(ex, "start")
        for ex in short + long:
            await api.node_event(ex, "node.started", "wait", timeout=30)
            assert (await holder(stack, ex)) == (leaving_id, leaving.pid)
        staying_id = (await stack.add_worker()).host.worker_id

        signalled = datetime.now(UTC)
        os.kill(leaving.pid, signal.SIGTERM)
        log = tmp_path / "leaving.log"
        await eventually(lambda: _true("stopped taking work" in log.read_text()), timeout=10)
        # started while the leaving worker still finishes its runs: the other one takes it
        late = (await api.create(short_flow))["id"]
        await api.command(late, "start")
        code = await asyncio.to_thread(leaving.wait, GRACE_S + 30)
        assert code == 0

        everything = [*short, *long, late]
        rows = {ex: await api.wait_status(ex, {"completed", "failed"}, 40) for ex in everything}
        for ex in short:  # finished where they ran, within the grace period
            assert rows[ex]["status"] == "completed", rows[ex]
            assert rows[ex]["attempt"] == 1
            assert await _started_on(watching[ex]) == [leaving_id]
            assert await audits(stack, ex) == []
        for ex in long:  # handed over, then run once elsewhere; no attempt spent
            assert rows[ex]["status"] == "completed", rows[ex]
            assert rows[ex]["attempt"] == 2
            events = await watching[ex]
            assert await _started_on(watching[ex]) == [leaving_id, staying_id]
            assert [e["type"] for e in events].count("execution.completed") == 1
            retrying = [e for e in events if e["type"] == "execution.retrying"]
            assert [e["data"]["attempt"] for e in retrying] == [2]
            # handed over at the end of the grace period, running elsewhere seconds later
            handover_s = (
                datetime.fromisoformat(retrying[0]["timestamp"]) - signalled
            ).total_seconds()
            assert GRACE_S <= handover_s <= GRACE_S + HANDOVER_S, handover_s
            handovers = await audits(stack, ex)
            assert [(a.reason, a.previous_worker_id, a.attempt) for a in handovers] == [
                ("handover", leaving_id, 1)
            ]
            assert await claim_holder(stack, ex) == ""
        assert rows[late]["status"] == "completed"
        assert rows[late]["attempt"] == 1
        assert await _started_on(api.watch(late)) == [staying_id]
        counters = stack.container.counters
        assert await counters.get("short-after") == 3  # each short run completed once
        assert await counters.get("long-after") == 2  # each long run completed once, elsewhere
        assert await counters.get("long-before") == 4  # the hand-over re-ran from the start


async def _started_on(watching: asyncio.Task[list[dict[str, Any]]]) -> list[str]:
    """The worker of each run, from the whole stream (which must be gap- and duplicate-free)."""
    events = await watching
    assert_contiguous(events)
    return [e["data"]["worker_id"] for e in events if e["type"] == "execution.started"]


async def _true(value: bool) -> bool:
    return value
