"""PostgreSQL restarted while executions run and are queued, in every mode.

What a platform team relies on: during the outage the API says 503 (JSON, `unavailable`), never
500; afterwards it recovers by itself; the outage is never blamed on a flow (no execution fails,
none stays queued, none loses an attempt to it); `tally` counted exactly once per execution;
every stream is contiguous with one terminal event; workers and the command listener are back
(a new execution runs, a stop reaches a running one). The sweepers acting after a restart are
tested in test_postgres_restart_sweepers.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import flows
from tests.e2e.conftest import MODES, Mode
from tests.e2e.stack import (
    FINISHED,
    Api,
    Stack,
    assert_contiguous,
    eventually,
    open_stack,
    stack_env,
)
from tests.faults.own_postgres import (  # noqa: F401 (fixtures)
    own_database_url,
    own_postgres,
    production_logging,
)
from twintrack.domain.events import EventType
from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.tooling.embedded.discovery import ProvidedBroker
from twintrack.tooling.embedded.postgres import EmbeddedPostgres

EXECUTIONS = 40
DELAY_MS = 1500
OUTAGE_S = 3.0
# Longer than the outage: an outage shorter than the lease must not cost an attempt.
CLAIM_TTL_S = "12"


async def _probe(api: Api, execution_id: str, flow_id: str) -> list[tuple[int, str | None]]:
    """One read and one write as a client would send them: (status, error code) of each."""
    answers = []
    for response in (
        await api.client.get(f"/v1/executions/{execution_id}", headers=api.auth),
        await api.client.post("/v1/executions", json={"flow_id": flow_id}, headers=api.auth),
    ):
        code = None
        if response.status_code >= 400:
            code = response.json()["error"]["code"]
        answers.append((response.status_code, code))
    return answers


async def _outage(
    server: EmbeddedPostgres, api: Api, execution_id: str, flow_id: str
) -> list[tuple[int, str | None]]:
    """Keep the database down for OUTAGE_S while probing the API; the answers seen."""
    server.stop_keeping_data()
    seen: list[tuple[int, str | None]] = []
    try:
        ends = time.monotonic() + OUTAGE_S
        while time.monotonic() < ends:
            seen += await _probe(api, execution_id, flow_id)
            await asyncio.sleep(0.1)  # probe pacing, not synchronisation
    finally:
        server.start_again()
    return seen


async def _all_finished(api: Api, ids: list[str]) -> list[dict[str, Any]] | None:
    rows = [await api.get(i) for i in ids]
    return rows if all(r["status"] in FINISHED for r in rows) else None


@pytest.mark.timeout(150)
@pytest.mark.usefixtures("production_logging")
@pytest.mark.parametrize("mode", list(MODES.values()), ids=list(MODES))
async def test_postgres_restart_mid_run_loses_nothing_and_blames_no_flow(
    mode: Mode,
    own_postgres: EmbeddedPostgres,  # noqa: F811
    own_database_url: str,  # noqa: F811
    kafka_broker: ProvidedBroker,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    env = {
        **stack_env(
            own_database_url,
            kafka_broker.bootstrap_servers,
            unique_name("tt"),
            kafka_broker.capabilities.idempotence,
        ),
        **mode.env,
        "CLAIM_TTL_S": CLAIM_TTL_S,
        "WORKER_CONCURRENCY": "10",
        "DBOS_WORKER_CONCURRENCY": "10",
    }
    async with open_stack(env, tmp_path) as stack:
        await stack.add_worker()  # one per process: DBOS is a process-wide singleton
        await _run_through_restart(stack, own_postgres)


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("production_logging")
@pytest.mark.parametrize("mode", list(MODES.values()), ids=list(MODES))
async def test_work_delivered_during_the_outage_runs_once_the_database_is_back(
    mode: Mode,
    own_postgres: EmbeddedPostgres,  # noqa: F811
    own_database_url: str,  # noqa: F811
    kafka_broker: ProvidedBroker,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """The worker gets an execution while the database is down (a Kafka task still arrives; a
    DBOS step dequeued just before runs): its claim waits the outage out instead of killing
    the consume loop or ending the workflow in error with the execution `queued` for good."""
    env = {
        **stack_env(
            own_database_url,
            kafka_broker.bootstrap_servers,
            unique_name("tt"),
            kafka_broker.capabilities.idempotence,
        ),
        **mode.env,
        "CLAIM_TTL_S": CLAIM_TTL_S,
    }
    async with open_stack(env, tmp_path) as stack:
        worker = await stack.add_worker()
        api, service = stack.api, stack.container.service
        flow_id = await api.create_flow(flows.crashable(ms=50))
        ex = (await api.create(flow_id))["id"]
        # Queued as `start` does it, with its delivery still to come.
        async with service.executions.locked(ex) as locked:
            record = await service.write_locked(
                locked, ExecutionStatus.QUEUED, EventType.EXECUTION_QUEUED, {}
            )

        own_postgres.stop_keeping_data()
        try:
            if record.track is Track.KAFKA:
                await service.queues[Track.KAFKA].enqueue(ex, 1, record.events_backend)
                stepping = None
            else:
                assert worker.dbos is not None
                stepping = asyncio.create_task(worker.dbos.execute(ex))
            await asyncio.sleep(OUTAGE_S)  # the outage's length, not synchronisation
            assert stepping is None or not stepping.done(), stepping
        finally:
            own_postgres.start_again()

        row = await api.wait_status(ex, FINISHED, timeout=30)
        assert (row["status"], row["attempt"]) == ("completed", 1), row
        if stepping is not None:
            assert await stepping == "completed"
        assert await stack.container.counters.get("after") == 1
        events = await api.events(ex)
        assert_contiguous(events)
        await _workers_and_listener_are_back(api)


async def _run_through_restart(stack: Stack, server: EmbeddedPostgres) -> None:
    api, counters = stack.api, stack.container.counters
    flow_id = await api.create_flow(flows.crashable(ms=DELAY_MS))
    ids = [(await api.create(flow_id))["id"] for _ in range(EXECUTIONS)]
    live = {ex: api.watch(ex) for ex in ids[-5:]}  # streams followed across the outage
    for ex in ids:
        assert await api.command(ex, "start") == 202
    # Some executions mid-flow (past `before`, in the delay), most still queued.
    await eventually(lambda: _at_least(counters.get("before"), 8), timeout=30)

    seen = await _outage(server, api, ids[0], flow_id)

    assert seen, "the API was never probed during the outage"
    assert {status for status, _ in seen} == {503}, seen
    assert {code for _, code in seen} == {"unavailable"}, seen
    await eventually(lambda: _answers(api, ids[0]), timeout=20)

    rows = await eventually(lambda: _all_finished(api, ids), timeout=60, every=0.5)
    assert [r["status"] for r in rows] == ["completed"] * EXECUTIONS, [
        (r["id"], r["status"], r.get("error_message")) for r in rows if r["status"] != "completed"
    ]
    assert [r["attempt"] for r in rows] == [1] * EXECUTIONS
    assert await counters.get("before") == EXECUTIONS
    assert await counters.get("after") == EXECUTIONS
    assert sorted(r["outputs"]["after"] for r in rows) == list(range(1, EXECUTIONS + 1))
    for ex in ids:
        events = await api.events(ex)
        assert_contiguous(events)
        assert events[-1]["type"] == "execution.completed", events[-1]
        assert "execution.retrying" not in {e["type"] for e in events}
    for ex, watching in live.items():
        events = await watching
        assert_contiguous(events)
        assert events[-1]["type"] == "execution.completed", (ex, events[-1])

    await _workers_and_listener_are_back(api)


async def _workers_and_listener_are_back(api: Api) -> None:
    """A new execution runs to its end, and a stop reaches a running one (live NOTIFY)."""
    quick = await api.create_flow(flows.three_nodes())
    ex = (await api.create(quick))["id"]
    await api.command(ex, "start")
    assert (await api.wait_status(ex, FINISHED, timeout=20))["status"] == "completed"

    slow = await api.create_flow(flows.long_delay())
    ex = (await api.create(slow))["id"]
    await api.command(ex, "start")
    await api.node_event(ex, "node.started", "wait", timeout=20)
    assert await api.command(ex, "stop", "after the restart") == 202
    assert (await api.wait_status(ex, FINISHED, timeout=10))["status"] == "stopped"


async def _answers(api: Api, execution_id: str) -> bool:
    r = await api.client.get(f"/v1/executions/{execution_id}", headers=api.auth)
    return r.status_code == 200


async def _at_least(value: Any, n: int) -> bool:
    return bool(await value >= n)
