"""What the lifecycle fault tests share: flows, and finding and killing a run's worker process."""

from __future__ import annotations

import os
import signal
from typing import Any

from sqlalchemy import func, select

from tests.e2e.flows import flow
from tests.e2e.stack import Stack, eventually, holder
from twintrack.adapters.postgres.tables import ExecutionClaimRow, ExecutionRow, WorkerRow


async def live_workers(stack: Stack) -> int:
    async with stack.container.sessions() as session:
        rows = await session.scalars(
            select(WorkerRow.worker_id).where(WorkerRow.stopped_at.is_(None))
        )
        return len(list(rows))


async def spawn_worker(stack: Stack, name: str) -> None:
    """A `twintrack worker` process (to be SIGKILLed), once it is registered."""
    before = await live_workers(stack)
    stack.spawn_worker_process(name)

    async def up() -> bool:
        return await live_workers(stack) > before

    await eventually(up, timeout=30)


async def kill_holder(stack: Stack, execution_id: str) -> str:
    """SIGKILL the worker process holding the execution's claim; its worker id."""

    worker_id, pid = await eventually(lambda: holder(stack, execution_id))
    os.kill(pid, signal.SIGKILL)
    return str(worker_id)


async def lease_ran_out(stack: Stack, execution_id: str) -> None:
    """Wait until the execution's claim has expired (its holder is dead, nobody renews it)."""

    async def expired() -> bool:
        async with stack.container.sessions() as session:
            return bool(
                await session.scalar(
                    select(ExecutionClaimRow.expires_at < func.now()).where(
                        ExecutionClaimRow.execution_id == execution_id
                    )
                )
            )

    await eventually(expired, timeout=20)


async def children_of(stack: Stack, parent_id: str) -> list[tuple[str, str]]:
    """(id, status) of the parent's children, straight from the table."""
    async with stack.container.sessions() as session:
        rows = await session.execute(
            select(ExecutionRow.id, ExecutionRow.status).where(ExecutionRow.parent_id == parent_id)
        )
        return [(r.id, r.status.value) for r in rows]


def spawning(emits: int, child_ms: int, root_ms: int | None = None) -> dict[str, Any]:
    """The root runs `emits` emit nodes (and, with `root_ms`, a delay that keeps it running);
    each child runs only its listen region, holding for `child_ms`."""
    park = [("park", "delay", {"ms": root_ms})] if root_ms is not None else []
    return flow(
        "fan-out",
        [
            *[(f"e{i}", "emit", {"event": "go"}) for i in range(emits)],
            *park,
            ("on_go", "listen", {"event": "go"}),
            ("hold", "delay", {"ms": child_ms}),
            ("got", "output", {"name": "payload"}),
        ],
        [("on_go.payload", "hold.value"), ("hold.value", "got.value")],
    )


def spawn_then_wait(wait_ms: int) -> dict[str, Any]:
    """The root spawns one child at once and waits `wait_ms` (the crash point); the child
    (listen region only) finishes at once."""
    return flow(
        "spawn-then-wait",
        [
            ("seed", "const", {"value": 1}),
            ("first", "emit", {"event": "go"}),
            ("wait", "delay", {"ms": wait_ms}),
            ("out", "output", {"name": "done"}),
            ("on_go", "listen", {"event": "go"}),
            ("got", "output", {"name": "payload"}),
        ],
        [
            ("seed.value", "first.payload"),
            ("seed.value", "wait.value"),
            ("wait.value", "out.value"),
            ("on_go.payload", "got.value"),
        ],
    )


def spawn_on_first_attempt_only(wait_ms: int) -> dict[str, Any]:
    """Attempt 1 waits `wait_ms`, then spawns; attempt 2 fails before the spawn: 1 / (2 - runs)
    divides by zero once the durable `runs` tally reaches 2. So a crash during attempt 1's spawn
    leaves a child its parent will never start."""
    return flow(
        "first-attempt-spawns",
        [
            ("runs", "tally", {"name": "runs"}),
            ("gate", "math", {"op": "sub", "a": 2}),
            ("div", "math", {"op": "div", "a": 1}),
            ("wait", "delay", {"ms": wait_ms}),
            ("spawn", "emit", {"event": "go"}),
            ("on_go", "listen", {"event": "go"}),
            ("got", "output", {"name": "payload"}),
        ],
        [
            ("runs.count", "gate.b"),
            ("gate.result", "div.b"),
            ("div.result", "wait.value"),
            ("wait.value", "spawn.payload"),
            ("on_go.payload", "got.value"),
        ],
    )


def wait_then_spawn(wait_ms: int) -> dict[str, Any]:
    """The root waits `wait_ms`, then spawns one child, which finishes at once."""
    return flow(
        "wait-then-spawn",
        [
            ("wait", "delay", {"ms": wait_ms}),
            ("spawn", "emit", {"event": "go"}),
            ("on_go", "listen", {"event": "go"}),
            ("got", "output", {"name": "payload"}),
        ],
        [("wait.value", "spawn.payload"), ("on_go.payload", "got.value")],
    )
