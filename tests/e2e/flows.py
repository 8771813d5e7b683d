"""Flows the end-to-end tests run."""

from __future__ import annotations

from typing import Any


def flow(
    name: str, nodes: list[tuple[str, str, dict[str, Any]]], edges: list[tuple[str, str]]
) -> dict[str, Any]:
    return {
        "name": name,
        "nodes": [{"id": i, "type": t, "config": c} for i, t, c in nodes],
        "edges": [{"from": a, "to": b} for a, b in edges],
    }


def three_nodes() -> dict[str, Any]:
    """const -> math -> output: the 3-node flow of the benchmarks."""
    return flow(
        "three",
        [
            ("x", "const", {"value": 20}),
            ("add", "math", {"op": "add", "b": 22}),
            ("out", "output", {"name": "answer"}),
        ],
        [("x.value", "add.a"), ("add.result", "out.value")],
    )


def chain(n: int, ms: int = 0) -> dict[str, Any]:
    """n delays in a row, then an output: a flow whose nodes run one at a time."""
    nodes = [(f"n{i}", "delay", {"ms": ms}) for i in range(n)]
    edges = [(f"n{i}.value", f"n{i + 1}.value") for i in range(n - 1)]
    return flow(
        f"chain{n}",
        [*nodes, ("out", "output", {"name": "done"})],
        [*edges, (f"n{n - 1}.value", "out.value")],
    )


def long_delay(ms: int = 600_000) -> dict[str, Any]:
    return flow(
        "long",
        [("wait", "delay", {"ms": ms}), ("after", "output", {"name": "after"})],
        [("wait.value", "after.value")],
    )


def recursive(depth_marker: str = "go") -> dict[str, Any]:
    """Emits to itself: the root emits, every child emits again (until the depth cap)."""
    return flow(
        "recursive",
        [
            ("seed", "const", {"value": 0}),
            ("first", "emit", {"event": depth_marker}),
            ("on_go", "listen", {"event": depth_marker}),
            ("again", "emit", {"event": depth_marker}),
            ("got", "output", {"name": "payload"}),
        ],
        [
            ("seed.value", "first.payload"),
            ("on_go.payload", "again.payload"),
            ("on_go.payload", "got.value"),
        ],
    )


def crashable(ms: int) -> dict[str, Any]:
    """tally -> a long delay -> tally -> output: the second tally counts completed runs."""
    return flow(
        "crashable",
        [
            ("before", "tally", {"name": "before"}),
            ("wait", "delay", {"ms": ms}),
            ("after", "tally", {"name": "after"}),
            ("out", "output", {"name": "after"}),
        ],
        [
            ("before.count", "wait.value"),
            ("wait.value", "after.value"),
            ("after.count", "out.value"),
        ],
    )
