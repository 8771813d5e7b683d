"""Stopping a tree: every unfinished member, including children spawned while the stop runs."""

from __future__ import annotations

import pytest

from tests.unit.core.support import EMITTER, OWNER, claimed, new_flow, started
from twintrack.bootstrap import MemoryContainer
from twintrack.core.records import ExecutionRecord
from twintrack.core.service import ParentStopping
from twintrack.domain.commands import Command
from twintrack.domain.execution import ExecutionStatus

_S = ExecutionStatus


async def running(app: MemoryContainer, execution_id: str) -> ExecutionRecord:
    return (await claimed(app, execution_id))[1]


async def spawn(app: MemoryContainer, parent: ExecutionRecord, node_id: str) -> str:
    child = await app.service.spawn_child(
        parent, node_id=node_id, event="go", payload=None, flow_id=None
    )
    return child.execution_id


async def test_stop_reaches_every_unfinished_descendant(app: MemoryContainer) -> None:
    root = await running(app, (await started(app, await new_flow(app, EMITTER))).id)
    queued = await spawn(app, root, "queued")
    busy = await running(app, await spawn(app, root, "busy"))
    grandchild = await spawn(app, busy, "deep")
    done_claim, _ = await claimed(app, await spawn(app, root, "done"))
    await app.claims.transition(done_claim, _S.COMPLETED, release=True)

    await app.service.command(OWNER, root.id, Command.STOP, reason="enough")

    status = {r.id: r.status for r in await app.executions.tree(root.id)}
    assert status == {
        root.id: _S.RUNNING,  # told to stop: its worker ends it
        queued: _S.STOPPED,
        busy.id: _S.RUNNING,
        grandchild: _S.STOPPED,
        done_claim.execution_id: _S.COMPLETED,  # finished members are left alone
    }
    assert app.ports.commands.of(root.id) == [(Command.STOP, "enough")]
    assert app.ports.commands.of(busy.id) == [(Command.STOP, f"ancestor {root.id} was stopped")]
    assert (await app.executions.get(queued)).error_message == f"ancestor {root.id} was stopped"
    tree = await app.service.tree(OWNER, root.id)
    assert (tree.tree_status, tree.size) == (_S.RUNNING, 5)


async def test_children_spawned_while_the_stop_runs_are_stopped_too(
    app: MemoryContainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = await running(app, (await started(app, await new_flow(app, EMITTER))).id)
    member = await running(app, await spawn(app, root, "member"))
    store = app.stores.executions
    read_tree = store.tree
    late: dict[str, str | BaseException] = {}

    async def tree_then_spawns(execution_id: str, owner_id: str | None = None) -> object:
        members = await read_tree(execution_id, owner_id)
        if not late:
            # Workers spawn just after the stop read the tree: under the member, whose stop
            # is not stored yet, and under the root, whose stop is.
            late["member"] = await spawn(app, member, "late")
            try:
                late["root"] = await spawn(app, root, "late")
            except ParentStopping as stopping:
                late["root"] = stopping
        return members

    monkeypatch.setattr(store, "tree", tree_then_spawns)
    await app.service.command(OWNER, root.id, Command.STOP)

    assert isinstance(late["root"], ParentStopping)
    under_member = await app.executions.children(member.id)
    assert [c.id for c in under_member] == [late["member"]]
    assert under_member[0].status is _S.STOPPED
    unfinished = [r for r in await read_tree(root.id) if not r.status.is_terminal]
    assert {r.id for r in unfinished} == {root.id, member.id}
    for execution in unfinished:
        assert await app.executions.stop_reason(execution.id) is not None
