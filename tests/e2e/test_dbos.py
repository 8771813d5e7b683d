"""What only the DBOS track needs proving: slots, coexistence with Kafka, DBOS's own contract."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.e2e import flows
from tests.e2e.stack import assert_contiguous, eventually, open_stack
from twintrack.core.records import ExecutionRecord
from twintrack.domain.execution import ExecutionStatus, Track


async def test_a_thousand_unstarted_executions_do_not_block_running_ones(
    base_env: dict[str, str], logs: Path
) -> None:
    env = {**base_env, "ENABLE_DBOS_EXECUTION": "true", "DBOS_QUEUE_CONCURRENCY": "5"}
    async with open_stack(env, logs) as stack:
        await stack.add_worker()
        service, api = stack.container.service, stack.api
        flow_id = await api.create_flow(flows.three_nodes())
        # Ten at a time, well within the connection pool: one by one, on a busy 2-core machine,
        # the thousand creates took 20-60 s of the budget; ten at a time, a fifth of that.
        waiting: list[ExecutionRecord] = []
        for _ in range(100):
            waiting += await asyncio.gather(*(service.create("team-a", flow_id) for _ in range(10)))
        assert {e.track.value for e in waiting} == {"dbos"}
        ex = (await api.create(flow_id))["id"]
        await api.command(ex, "start")
        row = await api.wait_status(ex, "completed", timeout=20)
        assert row["outputs"] == {"answer": 42}
        unstarted = await service.executions.get(waiting[-1].id)
        assert unstarted.status is ExecutionStatus.CREATED


@pytest.mark.parametrize("global_limit", [None, "1"], ids=["per-worker-limit", "global-limit"])
async def test_a_backlog_is_taken_as_slots_free_not_at_the_poll_interval(
    base_env: dict[str, str], logs: Path, global_limit: str | None
) -> None:
    """One slot, four starts: each next one begins when the slot frees (the worker's own
    release, or with a global limit the cluster's `freed` notification), so the backlog drains
    in about four runs' time; at the 60 s fallback poll it would take minutes."""
    env = {
        **base_env,
        "ENABLE_DBOS_EXECUTION": "true",
        "DBOS_WORKER_CONCURRENCY": "1",
        "DBOS_QUEUE_POLLING_INTERVAL_S": "60",
    }
    if global_limit is not None:
        env["DBOS_QUEUE_CONCURRENCY"] = global_limit
    async with open_stack(env, logs) as stack:
        await stack.add_worker()
        api = stack.api
        flow_id = await api.create_flow(flows.crashable(ms=100))
        ids = [(await api.create(flow_id))["id"] for _ in range(4)]
        await asyncio.gather(*(api.command(ex, "start") for ex in ids))
        rows = await asyncio.gather(*(api.wait_status(ex, "completed", timeout=30) for ex in ids))
        assert [r["attempt"] for r in rows] == [1] * 4
        assert await stack.container.counters.get("after") == 4


async def test_starting_the_same_execution_twice_runs_it_once(
    base_env: dict[str, str], logs: Path
) -> None:
    env = {**base_env, "ENABLE_DBOS_EXECUTION": "true"}
    async with open_stack(env, logs) as stack:
        await stack.add_worker()
        api = stack.api
        ex = (await api.create(await api.create_flow(flows.crashable(ms=200))))["id"]
        codes = await asyncio.gather(*(api.command(ex, "start") for _ in range(5)))
        assert codes == [202] * 5
        # ... and a duplicate delivery of its workflow, as a retried start would make
        await stack.container.queues[Track.DBOS].enqueue(ex, 1)
        row = await api.wait_status(ex, "completed", timeout=20)
        assert row["attempt"] == 1
        assert await stack.container.counters.get("after") == 1
        assert_contiguous(await api.events(ex))


async def test_flipping_the_flag_with_executions_in_flight_strands_nothing(
    base_env: dict[str, str], logs: Path
) -> None:
    async with open_stack(base_env, logs) as stack:
        await stack.add_worker()  # serves both tracks, as workers do by default
        service, api = stack.container.service, stack.api
        flow_id = await api.create_flow(flows.crashable(ms=300))

        async def launch(n: int) -> list[str]:
            ids = [(await api.create(flow_id))["id"] for _ in range(n)]
            for ex in ids:
                await api.command(ex, "start")
            return ids

        on_kafka = await launch(5)
        service.policy = replace(service.policy, enable_dbos=True)  # the operator flips it
        on_dbos = await launch(5)
        service.policy = replace(service.policy, enable_dbos=False)  # ... and back
        on_kafka += await launch(3)

        rows = await asyncio.gather(
            *(api.wait_status(ex, "completed", timeout=30) for ex in on_kafka + on_dbos)
        )
        assert [r["track"] for r in rows] == ["kafka"] * 5 + ["kafka"] * 3 + ["dbos"] * 5
        assert all(r["attempt"] == 1 for r in rows)
        assert await stack.container.counters.get("after") == 13  # each ran exactly once
        for ex in on_kafka + on_dbos:
            events = await api.events(ex)
            assert_contiguous(events)


async def test_with_dbos_streams_the_events_live_in_the_workflow_stream_and_it_is_closed(
    base_env: dict[str, str], logs: Path
) -> None:
    env = {**base_env, "ENABLE_DBOS_EXECUTION": "true", "EXECUTION_EVENTS_BACKEND": "dbos"}
    async with open_stack(env, logs) as stack:
        await stack.add_worker()
        api = stack.api
        created = await api.create(await api.create_flow(flows.three_nodes()))
        assert (created["track"], created["events_backend"]) == ("dbos", "dbos")
        ex = created["id"]
        # subscribe before start: the parked workflow already holds `execution.created`
        watching = api.watch(ex)
        await api.command(ex, "start")
        events = await watching
        assert_contiguous(events)

        async def closed_stream() -> list[str] | None:
            # the close marker follows the terminal event a moment later
            async with stack.container.sessions() as session:
                rows = list(
                    await session.scalars(
                        text(
                            "SELECT value FROM dbos.streams WHERE workflow_uuid = :id "
                            'ORDER BY "offset"'
                        ).bindparams(id=ex)
                    )
                )
            return rows if rows and json.loads(rows[-1]) == "__DBOS_STREAM_CLOSED__" else None

        stored: list[str] = await eventually(closed_stream)
        async with stack.container.sessions() as session:
            in_kafka = await session.scalar(
                text("SELECT count(*) FROM kafka_event_logs WHERE execution_id = :id").bindparams(
                    id=ex
                )
            )
        assert [json.loads(v)["index"] for v in stored[:-1]] == [e["index"] for e in events]
        assert json.loads(stored[-1]) == "__DBOS_STREAM_CLOSED__"
        assert in_kafka == 0
