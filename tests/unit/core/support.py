"""Helpers of the use-case tests: a service on memory adapters, flows, and the steps a worker
takes (claim), so a test reads as the behaviour it checks."""

from __future__ import annotations

from typing import Any

from twintrack.bootstrap import MemoryContainer, in_memory
from twintrack.config import Settings
from twintrack.core.records import Claim, ExecutionRecord
from twintrack.domain.events import Event
from twintrack.domain.execution import Track
from twintrack.nodes.registry import builtin_registry

OWNER = "alice"


def settings(**overrides: Any) -> Settings:
    return Settings(database_url=None, kafka_bootstrap_servers=None, **overrides)


def app_with(**overrides: Any) -> MemoryContainer:
    return in_memory(settings(**overrides), registry=builtin_registry())


def flow(nodes: list[tuple[str, str, dict[str, Any]]], edges: list[tuple[str, str]]) -> Any:
    return {
        "name": "test",
        "nodes": [{"id": i, "type": t, "config": c} for i, t, c in nodes],
        "edges": [{"from": a, "to": b} for a, b in edges],
    }


SUM = flow(
    [
        ("x", "const", {"value": 2}),
        ("add", "math", {"op": "add", "b": 3}),
        ("out", "output", {"name": "result"}),
    ],
    [("x.value", "add.a"), ("add.result", "out.value")],
)

# Emits a child of the same flow; the child (started by `go`) outputs what it was given.
EMITTER = flow(
    [
        ("seed", "const", {"value": 7}),
        ("spawn", "emit", {"event": "go"}),
        ("on_go", "listen", {"event": "go"}),
        ("got", "output", {"name": "payload"}),
    ],
    [("seed.value", "spawn.payload"), ("on_go.payload", "got.value")],
)


async def new_flow(app: MemoryContainer, definition: Any = SUM, owner: str = OWNER) -> str:
    return (await app.flows.create(owner, "test", definition)).id


async def started(app: MemoryContainer, flow_id: str, owner: str = OWNER) -> ExecutionRecord:
    record = await app.service.create(owner, flow_id)
    return await app.service.start(owner, record.id)


async def claimed(
    app: MemoryContainer, execution_id: str, worker: str = "w-1"
) -> tuple[Claim, ExecutionRecord]:
    """What a worker does on taking the execution's task: claim it (queued -> running)."""
    record = await app.executions.get(execution_id)
    taken = await app.claims.claim(execution_id, worker, 30, track=record.track)
    assert taken is not None
    return taken


def events_of(app: MemoryContainer, execution_id: str) -> list[Event]:
    record = app.stores.executions.records[execution_id]
    return app.ports.buses[record.events_backend].of(execution_id)


def types_of(app: MemoryContainer, execution_id: str) -> list[str]:
    return [e.type.value for e in events_of(app, execution_id)]


def enqueued(app: MemoryContainer, track: Track = Track.KAFKA) -> list[tuple[str, int]]:
    return app.ports.queues[track].enqueued
