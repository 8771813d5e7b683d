"""A flow's DAG laid out for SVG: columns by longest path from a source, rows in flow order.

Small flows are the norm (a handful to a few dozen nodes), so a layered layout without edge
crossing minimisation reads well and needs no JavaScript or graph library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NODE_W, NODE_H = 130, 40
COL_GAP, ROW_GAP = 60, 24
MARGIN = 12


@dataclass(frozen=True)
class PlacedNode:
    id: str
    type: str
    x: float
    y: float
    status: str | None


@dataclass(frozen=True)
class PlacedEdge:
    source: str
    target: str
    label: str
    path: str
    error: bool  # leaves the source's `error` port


@dataclass(frozen=True)
class Layout:
    nodes: list[PlacedNode]
    edges: list[PlacedEdge]
    width: float
    height: float


def _node_of(endpoint: str) -> tuple[str, str]:
    node, _, port = endpoint.partition(".")
    return node, port


def layout(definition: Mapping[str, Any], statuses: Mapping[str, str] | None = None) -> Layout:
    """Place every node of a stored flow definition; `statuses` colours them."""
    statuses = statuses or {}
    order = [str(n["id"]) for n in definition.get("nodes", [])]
    types = {str(n["id"]): str(n.get("type", "")) for n in definition.get("nodes", [])}
    edges = [
        (*_node_of(str(e["from"])), *_node_of(str(e["to"]))) for e in definition.get("edges", [])
    ]
    incoming: dict[str, set[str]] = {n: set() for n in order}
    for source, _, target, _ in edges:
        if source in incoming and target in incoming:
            incoming[target].add(source)
    column: dict[str, int] = {}

    def depth(node: str, seen: frozenset[str] = frozenset()) -> int:
        if node not in column:
            if node in seen:  # validated flows are acyclic; do not loop on a bad one
                return 0
            parents = incoming[node]
            column[node] = 1 + max((depth(p, seen | {node}) for p in parents), default=-1)
        return column[node]

    for node in order:
        depth(node)
    rows: dict[int, int] = {}
    placed: dict[str, PlacedNode] = {}
    for node in order:
        col = column[node]
        row = rows.get(col, 0)
        rows[col] = row + 1
        x = MARGIN + col * (NODE_W + COL_GAP)
        y = MARGIN + row * (NODE_H + ROW_GAP)
        placed[node] = PlacedNode(node, types[node], x, y, statuses.get(node))
    drawn: list[PlacedEdge] = []
    for source, source_port, target, target_port in edges:
        a, b = placed.get(source), placed.get(target)
        if a is None or b is None:
            continue
        x1, y1 = a.x + NODE_W, a.y + NODE_H / 2
        x2, y2 = b.x, b.y + NODE_H / 2
        bend = max(COL_GAP / 2, (x2 - x1) / 2)
        path = f"M{x1:g},{y1:g} C{x1 + bend:g},{y1:g} {x2 - bend:g},{y2:g} {x2:g},{y2:g}"
        label = f"{source_port}→{target_port}"
        drawn.append(PlacedEdge(source, target, label, path, source_port == "error"))
    columns = max(column.values(), default=0) + 1
    tallest = max(rows.values(), default=1)
    return Layout(
        nodes=list(placed.values()),
        edges=drawn,
        width=2 * MARGIN + columns * NODE_W + (columns - 1) * COL_GAP,
        height=2 * MARGIN + tallest * NODE_H + (tallest - 1) * ROW_GAP,
    )
