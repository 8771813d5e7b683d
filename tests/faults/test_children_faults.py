"""Children under faults: a parent re-run after a crash, a stop while children are being
spawned, a crash between a child's create and its start, a stop that never reached a child.

Each ends with no child left `created`, or running under a stopped parent, and no child run
twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from tests.e2e.conftest import Mode, base_env, env, logs, mode  # noqa: F401
from tests.e2e.stack import Stack, assert_contiguous, eventually, open_stack
from tests.faults.lifecycle import (
    children_of,
    kill_holder,
    spawn_on_first_attempt_only,
    spawn_then_wait,
    spawn_worker,
    spawning,
    wait_then_spawn,
)
from twintrack.core.service import ParentStopping, child_execution_id
from twintrack.domain.commands import Command
from twintrack.domain.execution import ExecutionStatus

FINISHED = {"completed", "failed", "stopped"}


async def _all_children_finished(stack: Stack, parent_id: str) -> list[tuple[str, str]]:
    children = await children_of(stack, parent_id)
    return children if all(s in FINISHED for _, s in children) else []


@pytest.mark.timeout(90)
async def test_parent_rerun_after_a_crash_finds_its_finished_child_and_completes(
    env: dict[str, str],  # noqa: F811
    logs: Path,  # noqa: F811
) -> None:
    async with open_stack(env, logs) as stack:
        api = stack.api
        await spawn_worker(stack, "doomed")
        ex = (await api.create(await api.create_flow(spawn_then_wait(4000))))["id"]
        await api.command(ex, "start")
        spawned = await api.wait_event(ex, lambda e: e["type"] == "child.spawned", timeout=30)
        child = spawned[-1]["data"]["child_execution_id"]
        assert (await api.wait_status(child, "completed"))["attempt"] == 1
        await kill_holder(stack, ex)  # mid-`wait`: the child has already finished
        await stack.add_worker()

        row = await api.wait_status(ex, FINISHED, timeout=45)
        assert row["status"] == "completed", row
        assert row["attempt"] == 2
        assert row["outputs"] == {"done": 1}
        # The child was found, not run again nor duplicated ...
        assert await children_of(stack, ex) == [(child, "completed")]
        child_row = await api.get(child)
        assert child_row["attempt"] == 1
        child_events = await api.events(child)
        assert_contiguous(child_events)
        assert [e["type"] for e in child_events].count("execution.started") == 1
        # ... and announced once: the re-run does not repeat its `child.spawned`.
        events = await api.events(ex)
        assert_contiguous(events)
        assert [e["data"]["attempt"] for e in events if e["type"] == "execution.retrying"] == [2]
        spawns = [e["data"]["child_execution_id"] for e in events if e["type"] == "child.spawned"]
        assert spawns == [child]
        emit = [e["type"] for e in events if e["data"].get("node_id") == "first"]
        # the emit ran in both attempts; only the first announced the child
        first_attempt = ["node.started", "child.spawned", "node.completed"]
        assert emit == [*first_attempt, "node.started", "node.completed"]


@pytest.mark.timeout(60)
async def test_stop_while_children_are_spawned_leaves_no_child_behind(
    env: dict[str, str],  # noqa: F811
    logs: Path,  # noqa: F811
) -> None:
    # The sweeper would repair a child the stop missed, later: keep it out of this test.
    async with open_stack(env, logs, CHILD_SWEEP_GRACE_S="600") as stack:
        api = stack.api
        await stack.add_worker()
        flow_id = await api.create_flow(spawning(emits=60, child_ms=60_000))
        ex = (await api.create(flow_id, options={"max_concurrency": 2}))["id"]
        await api.command(ex, "start")
        await api.wait_event(ex, lambda e: e["type"] == "child.spawned", timeout=20)
        assert await api.command(ex, "stop", reason="enough") == 202

        root = await api.wait_status(ex, FINISHED, timeout=20)
        assert root["status"] == "stopped"
        # Every child made, including those made while the stop ran, ends stopped: none is
        # left `created`, queued or running (each would hold for a minute).
        children = await eventually(lambda: _all_children_finished(stack, ex), timeout=15)
        assert 1 <= len(children) <= 60
        assert {s for _, s in children} == {"stopped"}, children
        assert_contiguous(await api.events(ex))
        for child, _ in children:
            events = await api.events(child, timeout=10)
            assert_contiguous(events)
            assert events[-1]["type"] == "execution.stopped"


async def test_a_spawn_under_a_parent_whose_stop_is_stored_ends_its_child_itself(
    env: dict[str, str],  # noqa: F811
    logs: Path,  # noqa: F811
) -> None:
    """The stop's re-read of the tree may come before this child's row exists: the spawn, which
    checks once its row is committed, must then end the child itself."""
    async with open_stack(env, logs) as stack:
        api, service = stack.api, stack.container.service
        ex = (await api.create(await api.create_flow(spawning(emits=1, child_ms=60_000))))["id"]
        await api.command(ex, "start")
        # As a worker that claimed it would (no worker runs here): the root is running ...
        parent = await stack.container.executions.transition(ex, ExecutionStatus.RUNNING)
        # ... and its stop is stored, not yet obeyed, when its emit spawns.
        await stack.container.commands.send(ex, Command.STOP, "enough")
        with pytest.raises(ParentStopping, match="enough"):
            await service.spawn_child(parent, node_id="e0", event="go", payload=1, flow_id=None)
        child = child_execution_id(ex, "e0")
        row = await api.get(child)
        assert (row["status"], row["error_message"]) == ("stopped", f"ancestor {ex} was stopped")
        events = await api.events(child)
        assert_contiguous(events)
        assert [e["type"] for e in events] == ["execution.created", "execution.stopped"]


@pytest.mark.timeout(60)
async def test_emit_cancelled_between_child_create_and_start_still_starts_its_child(
    env: dict[str, str],  # noqa: F811
    logs: Path,  # noqa: F811
) -> None:
    async with open_stack(env, logs, CHILD_SWEEP_GRACE_S="600") as stack:
        api = stack.api
        await stack.add_worker()
        flow_id = await api.create_flow(wait_then_spawn(300))
        ex = (await api.create(flow_id, options={"flow_timeout_s": 1}))["id"]
        await api.command(ex, "start")
        await api.node_event(ex, "node.started", "wait")
        # Hold the spawn between its create and its start (see the crash test below) until the
        # flow timeout has cancelled the emitting node.
        async with stack.container.db_engine.connect() as blocker:
            await blocker.execute(text("LOCK TABLE execution_commands IN ACCESS EXCLUSIVE MODE"))
            created = await eventually(lambda: children_of(stack, ex), timeout=20)
            assert [s for _, s in created] == ["created"]
            root = await api.wait_status(ex, FINISHED)
            assert (root["status"], root["error_message"]) == ("failed", "flow timed out after 1s")
            await blocker.rollback()
        # The spawn was not cut in half: the child starts and runs, as any child of a parent
        # that ended on its own does.
        child = created[0][0]
        assert (await api.wait_status(child, FINISHED, timeout=20))["status"] == "completed"
        events = await api.events(child)
        assert_contiguous(events)
        assert [e["type"] for e in events][:2] == ["execution.created", "execution.queued"]


@pytest.mark.timeout(90)
async def test_crash_between_child_create_and_start_is_repaired_by_the_child_sweeper(
    env: dict[str, str],  # noqa: F811
    logs: Path,  # noqa: F811
) -> None:
    async with open_stack(env, logs, CHILD_SWEEP_GRACE_S="1") as stack:
        api = stack.api
        await spawn_worker(stack, "doomed")
        ex = (await api.create(await api.create_flow(spawn_on_first_attempt_only(1500))))["id"]
        await api.command(ex, "start")
        await api.node_event(ex, "node.started", "wait", timeout=30)
        # Hold the spawn between its create and its start: after committing the child, a spawn
        # asks whether its parent is being stopped, which reads execution_commands.
        async with stack.container.db_engine.connect() as blocker:
            await blocker.execute(text("LOCK TABLE execution_commands IN ACCESS EXCLUSIVE MODE"))
            created = await eventually(lambda: children_of(stack, ex), timeout=20)
            assert [s for _, s in created] == ["created"]
            await kill_holder(stack, ex)
            await blocker.rollback()
        child = created[0][0]
        await stack.add_worker()

        # The re-run fails before its spawn, so nothing will ever start the child: the sweeper
        # ends it, saying why.
        root = await api.wait_status(ex, FINISHED, timeout=45)
        assert root["status"] == "failed"
        assert root["error_message"] == "division by zero"
        row = await api.wait_status(child, FINISHED, timeout=20)
        assert row["status"] == "failed"
        assert row["error_message"].startswith(
            f"never started: parent {ex} ended failed before starting it"
        )
        events = await api.events(child)
        assert_contiguous(events)
        assert [e["type"] for e in events] == ["execution.created", "execution.failed"]
        assert await children_of(stack, ex) == [(child, "failed")]


@pytest.mark.timeout(60)
async def test_child_left_running_under_a_stopped_parent_is_stopped_by_the_sweeper(
    env: dict[str, str],  # noqa: F811
    logs: Path,  # noqa: F811
) -> None:
    async with open_stack(env, logs, CHILD_SWEEP_GRACE_S="1") as stack:
        api = stack.api
        await stack.add_worker()
        flow_id = await api.create_flow(spawning(emits=1, child_ms=60_000, root_ms=60_000))
        ex = (await api.create(flow_id))["id"]
        await api.command(ex, "start")
        spawned = await api.wait_event(ex, lambda e: e["type"] == "child.spawned", timeout=20)
        child = spawned[-1]["data"]["child_execution_id"]
        await api.wait_status(child, "running")
        # The root's stop is stored and obeyed, but whoever sent it died before descending.
        await stack.container.commands.send(ex, Command.STOP, "stopped, then the API died")
        assert (await api.wait_status(ex, FINISHED))["status"] == "stopped"

        row = await api.wait_status(child, FINISHED, timeout=20)
        assert row["status"] == "stopped"
        assert row["error_message"] == f"parent {ex} was stopped"
        events = await api.events(child)
        assert_contiguous(events)
        assert events[-1]["type"] == "execution.stopped"
