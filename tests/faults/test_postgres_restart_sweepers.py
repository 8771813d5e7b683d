"""After a PostgreSQL restart the cluster's background loops work again, not only the API and
the runs: in every mode, with two worker processes that both lived through the restart.

Each loop is made to act after the restart and its effect asserted: the command listener (a
stop sent then reaches the running root), the child sweeper (it stops the child that stop left
running) and recovery (the worker holding an execution is SIGKILLed; the survivor's sweeper
hands it to a new attempt, which completes). Their leader locks and LISTEN connections died with
the server, so each had to reconnect by itself. A third worker is started during the outage: it
waits the outage out at its start and joins (it used to exit with "connection refused").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

import pytest

from tests.e2e import flows
from tests.e2e.conftest import MODES, Mode
from tests.e2e.stack import FINISHED, Api, Stack, assert_contiguous, eventually, holder, open_stack
from tests.faults.lifecycle import kill_holder, live_workers, spawning
from tests.faults.own_postgres import (  # noqa: F401 (fixtures)
    own_database_url,
    own_postgres,
    production_logging,
)
from tests.faults.recovery_helpers import audits, env_for
from twintrack.domain.commands import Command
from twintrack.tooling.embedded.discovery import ProvidedBroker
from twintrack.tooling.embedded.postgres import EmbeddedPostgres


async def _answers(api: Api) -> bool:
    r = await api.client.get("/v1/executions", headers=api.auth)
    return r.status_code == 200


async def _workers(stack: Stack, at_least: int) -> bool:
    return await live_workers(stack) >= at_least


async def _restart_while_a_worker_starts(server: EmbeddedPostgres, stack: Stack) -> Popen[bytes]:
    """Stop the server, start a worker process, and bring the server back only once that
    worker has met the outage at its start (its log says it is waiting it out)."""
    assert stack.log_dir is not None
    server.stop_keeping_data()
    try:
        late = stack.spawn_worker_process("late")
        log = stack.log_dir / "late.log"
        waiting = b"database unavailable; retrying"  # core/transient.py, what=start
        await eventually(lambda: _true(waiting in log.read_bytes()), timeout=40)
        assert late.poll() is None, log.read_text(errors="replace")[-2000:]
    finally:
        server.start_again()
    await eventually(lambda: _answers(stack.api), timeout=20)
    return late


async def _true(value: bool) -> bool:
    return value


async def _the_child_sweeper_stops_what_a_stop_left_running(stack: Stack) -> None:
    api = stack.api
    flow_id = await api.create_flow(spawning(emits=1, child_ms=60_000, root_ms=60_000))
    root = (await api.create(flow_id))["id"]
    assert await api.command(root, "start") == 202
    spawned = await api.wait_event(root, lambda e: e["type"] == "child.spawned", timeout=30)
    child = spawned[-1]["data"]["child_execution_id"]
    await api.wait_status(child, "running", timeout=20)
    # Stored and NOTIFYed as the API's stop does, but not carried down the tree: the root's
    # worker must hear it (its listener), the child sweeper must end the child.
    await stack.container.commands.send(root, Command.STOP, "after the restart")
    assert (await api.wait_status(root, FINISHED, timeout=20))["status"] == "stopped"
    row = await api.wait_status(child, FINISHED, timeout=20)
    assert (row["status"], row["error_message"]) == ("stopped", f"parent {root} was stopped")
    assert_contiguous(await api.events(child))


async def _recovery_reruns_a_killed_workers_execution(stack: Stack) -> None:
    api, counters = stack.api, stack.container.counters
    ex = (await api.create(await api.create_flow(flows.crashable(ms=3000))))["id"]
    assert await api.command(ex, "start") == 202
    await api.node_event(ex, "node.started", "wait", timeout=30)
    held = await eventually(lambda: holder(stack, ex))
    assert held[1] != os.getpid()  # a worker process of its own, never this test's
    await kill_holder(stack, ex)
    row = await api.wait_status(ex, FINISHED, timeout=45)
    assert (row["status"], row["attempt"]) == ("completed", 2), row
    assert await counters.get("before") == 2  # once per attempt
    assert await counters.get("after") == 1
    assert {a.reason for a in await audits(stack, ex)} & {"expired_claim", "dead_executor"}
    events = await api.events(ex)
    assert_contiguous(events)
    assert [e["type"] for e in events].count("execution.retrying") == 1


@pytest.mark.timeout(90)  # 13-18 s per mode measured, on a 2-core machine shared with others
@pytest.mark.usefixtures("production_logging")
@pytest.mark.parametrize("mode", list(MODES.values()), ids=list(MODES))
async def test_listeners_and_sweepers_act_after_a_postgres_restart(
    mode: Mode,
    own_postgres: EmbeddedPostgres,  # noqa: F811
    own_database_url: str,  # noqa: F811
    kafka_broker: ProvidedBroker,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    env = env_for(mode, own_database_url, kafka_broker, unique_name)
    async with open_stack(env, tmp_path, CHILD_SWEEP_GRACE_S="1") as stack:
        api = stack.api
        for name in ("left", "right"):  # processes: one is SIGKILLed, DBOS is per process
            stack.spawn_worker_process(name)
        await eventually(lambda: _workers(stack, 2), timeout=40)
        warm = (await api.create(await api.create_flow(flows.three_nodes())))["id"]
        await api.command(warm, "start")
        assert (await api.wait_status(warm, FINISHED, timeout=30))["status"] == "completed"

        late = await _restart_while_a_worker_starts(own_postgres, stack)
        # The worker that started during the outage waited it out and joined.
        await eventually(lambda: _workers(stack, 3), timeout=40)
        assert late.poll() is None

        await _the_child_sweeper_stops_what_a_stop_left_running(stack)
        await _recovery_reruns_a_killed_workers_execution(stack)
