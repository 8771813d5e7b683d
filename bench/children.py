"""DESIGN §4: spawning 100 children, ≤ 5 ms per child.

A parent whose one `const` feeds 100 `emit` nodes, each spawning a child of a small flow
(`listen` → `output`). Per child: the span from the parent's first `child.spawned` event to its
100th (engine timestamps), divided by the 99 intervals. Run with the default `max_concurrency`
(8: eight emits in flight) and, for comparison, with 100 (full runs).
"""

from __future__ import annotations

import asyncio
import time

from bench.config import Sizes
from bench.drive import run_once
from bench.flows import child_flow, fan_out
from bench.infra import Deployment, progress
from bench.report import Row, Section
from bench.stats import Summary, fmt

GOAL_MS = 5.0


async def _tree_done(deployment: Deployment, root: str, timeout: float = 120) -> float:
    """time.time() when the whole tree had finished (polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tree = await deployment.api.tree(root)
        if tree["tree_status"] in ("completed", "failed", "stopped"):
            if tree["tree_status"] != "completed":
                raise RuntimeError(f"tree of {root} ended {tree['tree_status']}")
            return time.time()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"children of {root} not finished within {timeout:g}s")


async def _one(
    deployment: Deployment, flow_id: str, n: int, concurrency: int | None
) -> tuple[float, float, float]:
    """(ms per child between first and last spawn, ms per child from the first emit's start,
    ms from parent start request until every child finished)."""
    options = {"options": {"max_concurrency": concurrency}} if concurrency else {}
    run = await run_once(deployment.api, flow_id, **options)
    if run.terminal.type != "execution.completed":
        raise RuntimeError(f"parent ended {run.terminal.type}: {run.terminal.event}")
    spawned = [r.stamped for r in run.events if r.type == "child.spawned"]
    if len(spawned) != n:
        raise RuntimeError(f"{len(spawned)} child.spawned events, expected {n}")
    first_emit = min(
        r.stamped
        for r in run.events
        if r.type == "node.started" and r.event["data"]["node_id"].startswith("emit")
    )
    done = await _tree_done(deployment, run.execution_id)
    return (
        (spawned[-1] - spawned[0]) * 1000 / (n - 1),
        (spawned[-1] - first_emit) * 1000 / n,
        (done - run.t_opened) * 1000,
    )


async def measure(deployment: Deployment, sizes: Sizes) -> Section:
    api = deployment.api
    child_id = await api.create_flow(child_flow())
    flow_id = await api.create_flow(fan_out(sizes.children, child_id))
    results: dict[str, list[tuple[float, float, float]]] = {}
    for concurrency in sizes.children_concurrency:
        label = str(concurrency) if concurrency else "default (8)"
        progress(f"children: {sizes.children_runs} x {sizes.children}, concurrency {label}")
        results[label] = [
            await _one(deployment, flow_id, sizes.children, concurrency)
            for _ in range(sizes.children_runs)
        ]
    default = Summary.of([r[0] for r in results["default (8)"]])
    progress(f"children: per child {default.line()}")
    row = Row(
        "children",
        f"spawning {sizes.children} children: first → last `child.spawned`, per child "
        f"(median of {sizes.children_runs})",
        f"≤ {GOAL_MS:g} ms",
        f"{fmt(default.p50)} ms",
        default.p50 <= GOAL_MS,
        (default.p50,),
    )
    details = [
        f"{sizes.children_runs} parents per setting; median (max) over parents, milliseconds:",
        "",
        "| max_concurrency | per child, first → last spawn | per child, first emit "
        "started → last spawn | start → whole tree finished |",
        "|---|---|---|---|",
    ]
    for label, values in results.items():
        a, b, c = (Summary.of([v[i] for v in values]) for i in range(3))
        details.append(
            f"| {label} | {fmt(a.p50)} ({fmt(a.max)}) | {fmt(b.p50)} ({fmt(b.max)}) | "
            f"{fmt(c.p50)} ({fmt(c.max)}) |"
        )
    return Section("children", [row], details)
