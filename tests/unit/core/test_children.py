"""Spawning children: found again on a re-run, capped in depth and tree size, never escaping a
stop of their parent."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.core.support import EMITTER, OWNER, app_with, claimed, new_flow, started, types_of
from twintrack.bootstrap import MemoryContainer
from twintrack.core.records import ExecutionRecord
from twintrack.core.service import ParentStopping, child_execution_id
from twintrack.domain.commands import Command
from twintrack.domain.execution import ExecutionStatus
from twintrack.nodes.base import NodeError

_S = ExecutionStatus


async def running_root(app: MemoryContainer) -> ExecutionRecord:
    record = await started(app, await new_flow(app, EMITTER))
    return (await claimed(app, record.id))[1]


async def spawn(
    app: MemoryContainer, parent: ExecutionRecord, node_id: str = "spawn", payload: object = 7
) -> str:
    child = await app.service.spawn_child(
        parent, node_id=node_id, event="go", payload=payload, flow_id=None
    )
    return child.execution_id


async def test_a_child_is_created_and_started_under_its_parent(app: MemoryContainer) -> None:
    parent = await running_root(app)
    child_id = await spawn(app, parent)
    assert child_id == child_execution_id(parent.id, "spawn")  # the same on every attempt
    child = await app.executions.get(child_id)
    assert (child.status, child.parent_id, child.root_id, child.depth) == (
        _S.QUEUED,
        parent.id,
        parent.id,
        1,
    )
    assert (child.track, child.events_backend) == (parent.track, parent.events_backend)
    assert [(e.name, e.payload) for e in child.trigger_events] == [("go", 7)]
    assert types_of(app, child_id) == ["execution.created", "execution.queued"]
    assert await app.executions.children(parent.id) == [child]


async def test_spawning_again_finds_the_child_instead_of_making_another(
    app: MemoryContainer,
) -> None:
    parent = await running_root(app)
    first = await spawn(app, parent)
    again = await spawn(app, parent, payload="ignored")
    assert again == first
    assert len(await app.executions.tree(parent.id)) == 2
    assert types_of(app, first) == ["execution.created", "execution.queued"]
    assert app.ports.queues[parent.track].ids().count(first) == 1


async def test_a_child_a_crash_left_unannounced_gets_its_created_event(
    app: MemoryContainer,
) -> None:
    parent = await running_root(app)
    flow = await app.flows.get(OWNER, parent.flow_id)
    child_id = child_execution_id(parent.id, "spawn")
    await app.executions.create(  # the row, and a crash before its first event
        owner_id=OWNER,
        flow_id=flow.id,
        flow_version=flow.version,
        track=parent.track,
        events_backend=parent.events_backend,
        parent_id=parent.id,
        execution_id=child_id,
        next_event_index=1,
    )
    assert await spawn(app, parent) == child_id
    assert types_of(app, child_id) == ["execution.created", "execution.queued"]


async def test_the_depth_cap_refuses_a_child_too_deep() -> None:
    app = app_with(execution_max_depth=1)
    parent = await running_root(app)
    child = await app.executions.get(await spawn(app, parent))
    with pytest.raises(NodeError, match="EXECUTION_MAX_DEPTH is 1"):
        await spawn(app, child)
    assert await app.executions.children(child.id) == []


async def test_a_full_tree_refuses_more_children() -> None:
    app = app_with(max_executions_per_tree=3)
    parent = await running_root(app)
    await spawn(app, parent, "a")
    await spawn(app, parent, "b")
    with pytest.raises(NodeError, match="MAX_EXECUTIONS_PER_TREE"):
        await spawn(app, parent, "c")
    assert len(await app.executions.tree(parent.id)) == 3


async def test_concurrent_spawns_never_pass_the_tree_limit() -> None:
    app = app_with(max_executions_per_tree=4)
    parent = await running_root(app)
    outcomes = await asyncio.gather(
        *(spawn(app, parent, f"n{i}") for i in range(8)), return_exceptions=True
    )
    assert sum(isinstance(o, str) for o in outcomes) == 3
    assert all(isinstance(o, NodeError) for o in outcomes if not isinstance(o, str))
    assert len(await app.executions.tree(parent.id)) == 4


async def test_a_child_over_the_owner_running_limit_fails_instead_of_waiting() -> None:
    app = app_with(max_running_executions_per_owner=1)
    parent = await running_root(app)  # holds the owner's only slot
    with pytest.raises(NodeError, match="cannot start child"):
        await spawn(app, parent)
    child = await app.executions.get(child_execution_id(parent.id, "spawn"))
    assert child.status is _S.FAILED
    assert "not started" in str(child.error_message)
    assert types_of(app, child.id) == ["execution.created", "execution.failed"]


async def test_a_spawn_under_a_stopping_parent_ends_the_child(app: MemoryContainer) -> None:
    parent = await running_root(app)
    await app.service.command(OWNER, parent.id, Command.STOP, reason="enough")
    assert (await app.executions.get(parent.id)).status is _S.RUNNING  # its engine has not obeyed
    with pytest.raises(ParentStopping) as stopping:
        await spawn(app, parent)
    assert stopping.value.reason == "enough"
    child = await app.executions.get(child_execution_id(parent.id, "spawn"))
    assert child.status is _S.STOPPED
    assert child.error_message == f"ancestor {parent.id} was stopped"
    assert types_of(app, child.id)[-1] == "execution.stopped"
