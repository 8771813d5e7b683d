"""The layout's rules, read from the code's own imports (every import, lazy ones included).

- The inner rooms (domain, engine, nodes, core) name no driver or framework and no outer room:
  the use cases run the same over Postgres, Kafka, DBOS or the in-memory adapters.
- Adapters never reach up into entrypoints or the bootstrap; only the bootstrap (and the
  entrypoints, through it) picks implementations.
- No two modules import each other in a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "twintrack"

INNER = ("twintrack.domain", "twintrack.engine", "twintrack.nodes", "twintrack.core")
OUTER = ("twintrack.adapters", "twintrack.entrypoints", "twintrack.tooling", "twintrack.bootstrap")
DRIVERS = (
    "sqlalchemy",
    "alembic",
    "asyncpg",
    "psycopg",
    "aiokafka",
    "dbos",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, anywhere in it (a `from x import y` names x, or x.y when
    y is a submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if _is_internal_module(candidate):
                    yield candidate


def _is_internal_module(name: str) -> bool:
    base = SRC.joinpath(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _modules() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        graph[_module_name(path)] = set(_imports(path))
    return graph


GRAPH = _modules()


def _within(name: str, rooms: tuple[str, ...]) -> bool:
    return any(name == room or name.startswith(room + ".") for room in rooms)


@pytest.mark.parametrize("room", INNER)
def test_the_inner_rooms_name_no_driver_and_no_outer_room(room: str) -> None:
    wrong = sorted(
        f"{module} imports {imported}"
        for module, imports in GRAPH.items()
        if _within(module, (room,))
        for imported in imports
        if _within(imported, DRIVERS) or _within(imported, OUTER)
    )
    assert wrong == []


def test_adapters_never_reach_into_entrypoints_or_the_bootstrap() -> None:
    wrong = sorted(
        f"{module} imports {imported}"
        for module, imports in GRAPH.items()
        if _within(module, ("twintrack.adapters",))
        for imported in imports
        if _within(imported, ("twintrack.entrypoints", "twintrack.bootstrap"))
    )
    assert wrong == []


def _internal_edges() -> dict[str, set[str]]:
    """Module → internal modules it imports (a package's __init__ counted as the package)."""
    return {
        module: {i for i in imports if i in GRAPH and i != module}
        for module, imports in GRAPH.items()
    }


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle() -> None:
    edges = _internal_edges()
    # A package's __init__ that re-exports its own modules is not a circle with them.
    for module in edges:
        edges[module] = {i for i in edges[module] if not module.startswith(i + ".")}
    assert _cycles(edges) == []


def test_the_graph_reads_real_imports() -> None:
    """The rules above read real imports: a known edge is in the graph."""
    assert "twintrack.core.records" in GRAPH["twintrack.core.service"]
