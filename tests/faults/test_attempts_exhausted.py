"""Attempts exhausted (MAX_ATTEMPTS), on every mode: the execution ends `failed` with the true
last reason (here: the worker running it was SIGKILLed, so it stopped renewing its claim), the
terminal event is in the stream, the claim is released, and nothing runs again."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e import flows
from tests.e2e.conftest import MODES
from tests.e2e.stack import assert_contiguous, eventually, holder, open_stack
from tests.faults.recovery_helpers import audits, claim_holder, env_for, worker_id_of
from twintrack.tooling.embedded.discovery import ProvidedBroker


@pytest.fixture(params=list(MODES))
def fault_env(
    request: pytest.FixtureRequest,
    database_url: str,
    kafka_broker: ProvidedBroker,
    unique_name: Callable[[str], str],
) -> dict[str, str]:
    return env_for(MODES[request.param], database_url, kafka_broker, unique_name)


@pytest.mark.timeout(120)
async def test_the_last_attempt_killed_ends_failed_naming_the_dead_worker(
    fault_env: dict[str, str], tmp_path: Path
) -> None:
    async with open_stack(fault_env, tmp_path, MAX_ATTEMPTS="1") as stack:
        api = stack.api
        procs = [stack.spawn_worker_process("w1"), stack.spawn_worker_process("w2")]
        for proc in procs:
            await worker_id_of(stack, proc)
        flow_id = await api.create_flow(flows.crashable(ms=60_000))
        ex = (await api.create(flow_id))["id"]
        watching = api.watch(ex)
        await api.command(ex, "start")
        await api.node_event(ex, "node.started", "wait", timeout=30)
        dead_id, dead_pid = await eventually(lambda: holder(stack, ex))
        os.kill(dead_pid, signal.SIGKILL)

        row = await api.wait_status(ex, {"failed", "completed"}, timeout=40)
        expected = (
            f"gave up after 1 failed attempt (MAX_ATTEMPTS=1): attempt 1 on worker {dead_id} "
            "stopped renewing its claim"
        )
        assert row["status"] == "failed", row
        assert row["error_message"].startswith(expected), row["error_message"]
        assert row["attempt"] == 1  # given up, not run again
        events = await watching
        assert_contiguous(events)
        assert events[-1]["type"] == "execution.failed"
        assert events[-1]["data"]["error"]["message"] == row["error_message"]
        assert not [e for e in events if e["type"] == "execution.retrying"]
        assert await claim_holder(stack, ex) == ""  # released
        assert await stack.container.counters.get("before") == 1
        assert await stack.container.counters.get("after") == 0
        reasons = [(a.reason, a.previous_worker_id, a.attempt) for a in await audits(stack, ex)]
        assert reasons[-1] == ("max_attempts", dead_id, 1)
