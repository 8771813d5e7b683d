"""End to end through the HTTP API: executions, events, commands and children."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.e2e import flows
from tests.e2e.conftest import Mode
from tests.e2e.stack import Api, Stack, assert_contiguous, eventually, open_stack


async def test_create_subscribe_start_completes_with_outputs(api: Api, mode: Mode) -> None:
    flow_id = await api.create_flow(flows.three_nodes())
    created = await api.create(flow_id)
    assert created["status"] == "created"
    assert (created["track"], created["events_backend"]) == (mode.track, mode.events_backend)
    watching = api.watch(created["id"])  # subscribe before start
    assert await api.command(created["id"], "start") == 202
    events = await watching
    assert_contiguous(events)
    types = [e["type"] for e in events]
    assert types[:3] == ["execution.created", "execution.queued", "execution.started"]
    assert types[-1] == "execution.completed"
    assert events[-1]["data"]["outputs"] == {"answer": 42}
    row = await api.wait_status(created["id"], "completed")
    assert row["outputs"] == {"answer": 42}
    assert row["attempt"] == 1
    # Replays after the fact, from any index, see the same stream.
    assert await api.events(created["id"]) == events
    assert await api.events(created["id"], from_index=4) == events[4:]


async def test_debug_starts_paused_step_runs_one_node_then_resume(api: Api) -> None:
    flow_id = await api.create_flow(flows.chain(3))
    ex = (await api.create(flow_id, options={"debug": True}))["id"]
    watching = api.watch(ex)
    await api.command(ex, "start")
    await api.wait_status(ex, "paused")
    assert await api.command(ex, "step") == 202
    await api.node_event(ex, "node.completed", "n0")
    assert (await api.get(ex))["status"] == "paused"
    assert await api.command(ex, "resume") == 202
    events = await watching
    assert_contiguous(events)
    started = [e["data"]["node_id"] for e in events if e["type"] == "node.started"]
    assert started == ["n0", "n1", "n2", "out"]
    resumed_at = next(i for i, e in enumerate(events) if e["type"] == "execution.resumed")
    n1_started = next(
        i
        for i, e in enumerate(events)
        if e["type"] == "node.started" and e["data"]["node_id"] == "n1"
    )
    assert resumed_at < n1_started  # n1 only ran after resume: step ran exactly n0
    # The terminal event is flushed before the row is marked finished (DESIGN §2).
    await api.wait_status(ex, "completed")


async def test_stop_cancels_a_long_delay_within_a_second(api: Api) -> None:
    flow_id = await api.create_flow(flows.long_delay())
    ex = (await api.create(flow_id))["id"]
    watching = api.watch(ex)
    await api.command(ex, "start")
    await api.wait_status(ex, "running")
    sent = time.monotonic()
    assert await api.command(ex, "stop", "enough") == 202
    row = await api.wait_status(ex, "stopped", timeout=1.0)
    assert time.monotonic() - sent < 1.0
    assert row["error_message"] == "enough"
    events = await watching
    assert_contiguous(events)
    assert events[-1]["type"] == "execution.stopped"
    assert events[-1]["data"]["cancelled_nodes"] == ["wait"]
    assert await api.command(ex, "resume") == 409  # finished: commands answer 409


async def test_stop_before_any_worker_picks_it_up(bare_stack: Stack) -> None:
    api = bare_stack.api
    flow_id = await api.create_flow(flows.three_nodes())
    ex = (await api.create(flow_id))["id"]
    await api.command(ex, "start")
    assert (await api.get(ex))["status"] == "queued"
    assert await api.command(ex, "stop", "changed my mind") == 202
    assert (await api.get(ex))["status"] == "stopped"
    await bare_stack.add_worker()  # the task is still in Kafka: the worker must skip it
    events = await api.events(ex)
    assert_contiguous(events)
    assert [e["type"] for e in events] == [
        "execution.created",
        "execution.queued",
        "execution.stopped",
    ]


async def test_pause_sent_before_pickup_is_honoured_when_a_worker_takes_it(
    bare_stack: Stack,
) -> None:
    api = bare_stack.api
    flow_id = await api.create_flow(flows.chain(2))
    ex = (await api.create(flow_id))["id"]
    await api.command(ex, "start")
    assert await api.command(ex, "pause") == 202
    await bare_stack.add_worker()
    events = await api.wait_event(ex, lambda e: e["type"] == "execution.paused")
    assert [e["type"] for e in events] == [
        "execution.created",
        "execution.queued",
        "execution.started",
        "execution.paused",
    ]
    assert (await api.wait_status(ex, "paused"))["status"] == "paused"
    await api.command(ex, "resume")
    await api.wait_status(ex, "completed")


async def test_children_to_depth_3_then_the_depth_cap(env: dict[str, str], logs: Path) -> None:
    async with open_stack(env, logs, EXECUTION_MAX_DEPTH="3") as stack:
        await stack.add_worker()
        api = stack.api
        flow_id = await api.create_flow(flows.recursive())
        root = (await api.create(flow_id))["id"]
        await api.command(root, "start")

        async def tree_done() -> dict[str, Any] | None:
            tree = await stack.api.tree(root)
            return tree if tree["tree_status"] != "running" else None

        tree = await eventually(tree_done, timeout=20)
        members = tree["executions"]
        assert sorted(m["depth"] for m in members) == [0, 1, 2, 3]
        assert {m["track"] for m in members} == {stack.settings_track}
        by_depth = {m["depth"]: m for m in members}
        assert by_depth[3]["status"] == "failed"
        assert "EXECUTION_MAX_DEPTH is 3" in by_depth[3]["error_message"]
        assert all(by_depth[d]["status"] == "completed" for d in (0, 1, 2))
        assert by_depth[2]["parent_id"] == by_depth[1]["id"]
        assert tree["tree_status"] == "failed"
        child_events = await api.events(by_depth[1]["id"])
        assert_contiguous(child_events)
        assert child_events[0]["data"]["depth"] == 1


async def test_stop_cascades_to_running_descendants(api: Api) -> None:
    parent_flow = flows.flow(
        "spawns sleepers",
        [
            ("kick", "emit", {"event": "sleep"}),
            ("on_sleep", "listen", {"event": "sleep"}),
            ("zz", "delay", {"ms": 600_000}),
            ("wait", "delay", {"ms": 600_000}),
        ],
        [("on_sleep.payload", "zz.value")],
    )
    flow_id = await api.create_flow(parent_flow)
    root = (await api.create(flow_id))["id"]
    await api.command(root, "start")

    async def child_running() -> str | None:
        members = (await api.tree(root))["executions"]
        kids = [m for m in members if m["depth"] == 1 and m["status"] == "running"]
        return str(kids[0]["id"]) if kids else None

    child = await eventually(child_running)
    assert await api.command(root, "stop") == 202
    await api.wait_status(root, "stopped", timeout=5)
    child_row = await api.wait_status(child, "stopped", timeout=5)
    assert child_row["error_message"] == f"ancestor {root} was stopped"
    assert (await api.tree(root))["tree_status"] == "stopped"


async def test_metrics_count_executions_by_track(api: Api, mode: Mode) -> None:
    ex = (await api.create(await api.create_flow(flows.three_nodes())))["id"]
    await api.command(ex, "start")
    await api.wait_status(ex, "completed")
    text = (await api.client.get("/metrics")).text
    finished = [
        line
        for line in text.splitlines()
        if line.startswith("twintrack_executions_finished_total{")
        and 'status="completed"' in line
        and f'track="{mode.track}"' in line
    ]
    assert finished
    assert float(finished[0].rsplit(" ", 1)[1]) >= 1
    assert f'twintrack_claims_total{{track="{mode.track}"}}' in text
    assert f'twintrack_executions_created_total{{track="{mode.track}"}}' in text
