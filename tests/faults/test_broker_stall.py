"""The broker stalls (SIGSTOP, as a network partition looks) while executions run.

Required outcome, in every mode: API calls that need the broker answer 503 within
BROKER_CALL_TIMEOUT_S instead of hanging; runs wait for their events instead of burning
attempts; after the stall every execution completes exactly once (first attempt, side effects
once) with a gap- and duplicate-free stream. The stall is the issue's 20 s: past aiokafka's 15 s
request timeout, so events are held, then re-sent with backoff, while API calls time out. It
costs about 30-40 s per mode, within half of the test's 120 s timeout.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e import conftest as e2e
from tests.e2e import flows
from tests.e2e.conftest import Mode
from tests.e2e.stack import Api, Stack, assert_contiguous, open_stack, stack_env
from tests.faults.broker import own_broker
from tests.fixtures.servers import UniqueName
from twintrack.tooling.embedded.broker import EmbeddedBroker

__all__ = ["own_broker"]
mode, logs = e2e.mode, e2e.logs

RUNS = 6
CALL_TIMEOUT_S = 3.0
#: The stall's length (`FAULT_STALL_S` shortens it when iterating on this file, never in CI).
STALL_S = float(os.environ.get("FAULT_STALL_S", "20"))


@pytest.fixture
def stall_env(
    database_url: str, own_broker: EmbeddedBroker, unique_name: UniqueName, mode: Mode
) -> dict[str, str]:
    env = stack_env(database_url, own_broker.bootstrap_servers, unique_name("stall"), False)
    env |= mode.env | {"BROKER_CALL_TIMEOUT_S": str(CALL_TIMEOUT_S), "WORKER_CONCURRENCY": "10"}
    env |= {"DBOS_WORKER_CONCURRENCY": "10"}  # every run at once, so all are mid-run
    # Leases live in Postgres and are renewed through the stall; a longer TTL than the e2e
    # suite's 3 s only keeps a loaded CI machine's late heartbeat from looking like a crash.
    env |= {"CLAIM_TTL_S": "10"}
    return env


@pytest_asyncio.fixture
async def stalled_stack(
    stall_env: dict[str, str], own_broker: EmbeddedBroker, logs: Path
) -> AsyncIterator[Stack]:
    """The API and one worker on a broker of the test's own (so it can be stalled)."""
    async with open_stack(stall_env, logs) as stack:
        await stack.add_worker()
        yield stack
        own_broker.resume()  # never tear down against a frozen broker


@pytest_asyncio.fixture
async def stalled_bare_stack(
    stall_env: dict[str, str], own_broker: EmbeddedBroker, logs: Path
) -> AsyncIterator[Stack]:
    """The same with no worker yet: executions stay queued until the test adds one."""
    async with open_stack(stall_env, logs) as stack:
        yield stack
        own_broker.resume()


async def _post(api: Api, path: str, body: dict[str, Any] | None = None) -> tuple[int, float]:
    began = time.monotonic()
    r = await api.client.post(path, json=body, headers=api.auth)
    return r.status_code, time.monotonic() - began


def _needs_broker(mode: Mode) -> bool:
    return mode.events_backend == "kafka"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stall_s", [STALL_S])
async def test_broker_stall_mid_run(
    stalled_stack: Stack, own_broker: EmbeddedBroker, mode: Mode, stall_s: float
) -> None:
    stack, api = stalled_stack, stalled_stack.api
    flow_id = await api.create_flow(flows.crashable(ms=3000))
    # A parent that spawns a `crashable` child 1.5 s in, during the stall.
    parent_flow = flows.flow(
        "parent",
        [
            ("seed", "const", {"value": 0}),
            ("wait", "delay", {"ms": 1500}),
            ("spawn", "emit", {"event": "go", "flow_id": flow_id}),
        ],
        [("seed.value", "wait.value"), ("wait.value", "spawn.payload")],
    )
    parent = (await api.create(await api.create_flow(parent_flow)))["id"]
    running = [(await api.create(flow_id))["id"] for _ in range(RUNS)] + [parent]
    waiting = (await api.create(flow_id))["id"]  # created, started during the stall
    watching = [api.watch(ex) for ex in running]
    for ex in running:
        assert await api.command(ex, "start") == 202
    for ex in running:
        await api.wait_status(ex, "running", timeout=20)

    own_broker.pause()
    stalled_at = time.monotonic()
    create_status, create_took = await _post(api, "/v1/executions", {"flow_id": flow_id})
    start_status, start_took = await _post(api, f"/v1/executions/{waiting}/start")
    get = await api.client.get(f"/v1/executions/{running[0]}", headers=api.auth)
    print(
        f"stall {mode.name}: create {create_status} in {create_took:.2f}s, "
        f"start {start_status} in {start_took:.2f}s"
    )
    if _needs_broker(mode):
        assert (create_status, start_status) == (503, 503)
    else:  # DBOS streams: tasks and events in Postgres, nothing here needs the broker
        assert (create_status, start_status) == (201, 202)
    assert create_took < CALL_TIMEOUT_S + 2
    assert start_took < CALL_TIMEOUT_S + 2
    assert get.status_code == 200
    # Hold the stall for its full length while runs go on: no run may fail or burn an attempt.
    while time.monotonic() - stalled_at < stall_s:
        rows = [await api.get(ex) for ex in running]
        assert {r["attempt"] for r in rows} == {1}
        assert not [r for r in rows if r["status"] == "failed"]
        await asyncio.sleep(0.5)
    own_broker.resume()
    resumed_at = time.monotonic()

    if start_status != 202:  # the 503 said "retry later": now it goes through
        assert await api.command(waiting, "start") == 202
    rows = [await api.wait_status(ex, {"completed", "failed"}, timeout=45) for ex in running]
    assert [r["status"] for r in rows] == ["completed"] * len(running), rows
    assert [r["attempt"] for r in rows] == [1] * len(running)
    print(
        f"stall {mode.name}: all runs completed {time.monotonic() - resumed_at:.2f}s after resume"
    )
    for events in await asyncio.gather(*watching):
        assert_contiguous(events)
        assert [e["type"] for e in events].count("execution.retrying") == 0
    late = await api.wait_status(waiting, {"completed", "failed"}, timeout=45)
    assert late["status"] == "completed", late
    members = (await api.tree(parent))["executions"]
    assert len(members) == 2, members  # the spawn waited the stall out: one child, no failure
    child = next(m["id"] for m in members if m["id"] != parent)
    child_row = await api.wait_status(child, {"completed", "failed"}, timeout=45)
    assert (child_row["status"], child_row["attempt"]) == ("completed", 1), child_row
    assert_contiguous(await api.events(child))
    counters = stack.container.counters
    # every execution ran once, none twice (the child's nodes are outside its event's scope)
    assert await counters.get("before") == RUNS + 1
    assert await counters.get("after") == RUNS + 1
    if create_status == 201:  # the create that went through during the stall is a normal one
        return
    # The create refused during the stall can simply be retried.
    retried = (await api.create(flow_id))["id"]
    assert await api.command(retried, "start") == 202
    assert (await api.wait_status(retried, {"completed", "failed"}, timeout=30))[
        "status"
    ] == "completed"


@pytest.mark.timeout(120)
async def test_a_stop_refused_during_a_stall_still_ends_the_execution_stopped(
    stalled_bare_stack: Stack, own_broker: EmbeddedBroker, mode: Mode
) -> None:
    """The refused stop's event may still land after the stall: the stored stop makes the run
    that follows end the same way, so the row and the stream agree."""
    stack, api = stalled_bare_stack, stalled_bare_stack.api
    flow_id = await api.create_flow(flows.three_nodes())
    ex = (await api.create(flow_id))["id"]
    assert await api.command(ex, "start") == 202  # queued: no worker yet
    own_broker.pause()
    status, took = await _post(api, f"/v1/executions/{ex}/stop", {"reason": "enough"})
    assert took < CALL_TIMEOUT_S + 2
    assert status == (503 if _needs_broker(mode) else 202)
    own_broker.resume()
    await stack.add_worker()
    row = await api.wait_status(ex, {"completed", "failed", "stopped"}, timeout=45)
    assert row["status"] == "stopped", row
    events = await api.events(ex)
    assert_contiguous(events)
    assert events[-1]["type"] == "execution.stopped"
