"""Side-effect gating in shadow runs (engine/shadow.py): a side-effecting node is never run in a
shadow — its recorded result is replayed — while pure nodes run as usual."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.unit.engine.test_engine import Recorder, make_flow
from twintrack.domain.events import EventType
from twintrack.domain.execution import ExecutionStatus
from twintrack.engine import EngineServices, InMemoryCounters, run_flow
from twintrack.engine.shadow import ShadowReplay
from twintrack.nodes.base import NodeConfig, NodeContext, NodeType, SpawnedChild
from twintrack.nodes.builtin import BUILTIN_NODE_TYPES
from twintrack.nodes.registry import builtin_registry

T = EventType


class Spawner:
    def __init__(self) -> None:
        self.spawned: list[str] = []

    async def spawn(
        self, *, node_id: str, event: str, payload: Any, flow_id: str | None
    ) -> SpawnedChild:
        self.spawned.append(node_id)
        return SpawnedChild(execution_id=f"ex_{'a' * 32}", flow_id="fl_x", depth=1)


TALLY_AND_EMIT: list[tuple[str, str, dict[str, Any]]] = [
    ("x", "const", {"value": 4}),
    ("count", "tally", {"name": "runs"}),
    ("spawn", "emit", {"event": "go"}),
    ("out", "output", {"name": "count"}),
    ("twice", "math", {"op": "mul", "b": 2}),
    ("res", "output", {"name": "twice"}),
]
EDGES = [
    ("x.value", "count.value"),
    ("x.value", "spawn.payload"),
    ("count.count", "out.value"),
    ("count.count", "twice.a"),
    ("twice.result", "res.value"),
]


async def _original() -> tuple[Recorder, InMemoryCounters, Spawner, Any]:
    flow = make_flow(TALLY_AND_EMIT, EDGES)
    recorder, counters, spawner = Recorder(), InMemoryCounters(), Spawner()
    counters.values["runs"] = 41  # the counter already counted other executions
    result = await run_flow(
        flow,
        execution_id="ex_test",
        sink=recorder.sink,
        services=EngineServices(counters=counters, children=spawner),
    )
    return recorder, counters, spawner, result


async def test_a_shadow_replays_side_effecting_nodes_and_runs_the_pure_ones() -> None:
    original, counters, spawner, first = await _original()
    assert first.outputs == {"count": 42, "twice": 84}
    flow = make_flow(TALLY_AND_EMIT, EDGES)
    replay = ShadowReplay.from_events(original.events, ["count", "spawn"])
    shadow_counters, shadow_spawner = InMemoryCounters(), Spawner()
    recorder = Recorder()
    result = await run_flow(
        flow,
        execution_id="ex_test",
        sink=recorder.sink,
        services=EngineServices(counters=shadow_counters, children=shadow_spawner, shadow=replay),
    )
    # The same result, with no second effect: nothing counted, nothing spawned.
    assert (result.status, result.outputs) == (ExecutionStatus.COMPLETED, first.outputs)
    assert counters.values["runs"] == 42
    assert shadow_counters.values == {}
    assert shadow_spawner.spawned == []
    assert spawner.spawned == ["spawn"]
    # The stream carries what the original wrote for them (the child it announced included).
    assert [e.data for e in recorder.of(T.CHILD_SPAWNED)] == [
        e.data for e in original.of(T.CHILD_SPAWNED)
    ]
    assert recorder.nodes(T.NODE_COMPLETED) == original.nodes(T.NODE_COMPLETED)
    assert sorted(replay.replayed) == ["count", "spawn"]
    assert all("side effects" in why for why in replay.replayed.values())


async def test_a_side_effecting_node_the_original_never_finished_fails_in_the_shadow() -> None:
    flow = make_flow([("count", "tally", {"name": "runs"})], [])
    replay = ShadowReplay.from_events([], ["count"])
    recorder = Recorder()
    counters = InMemoryCounters()
    result = await run_flow(
        flow,
        execution_id="ex_test",
        sink=recorder.sink,
        services=EngineServices(counters=counters, shadow=replay),
    )
    assert result.status is ExecutionStatus.FAILED
    assert counters.values == {}
    (failed,) = recorder.of(T.NODE_FAILED)
    assert "no result" in failed.data["error"]


class UndeclaredConfig(NodeConfig):
    pass


class Undeclared(NodeType):
    """A plugin that says nothing about side effects."""

    type_name = "undeclared"
    config_model = UndeclaredConfig

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        raise AssertionError("never run in a shadow")


async def test_plugins_have_side_effects_unless_they_declare_none() -> None:
    assert Undeclared.side_effects is True
    effectful = {t.type_name for t in BUILTIN_NODE_TYPES if t.side_effects}
    assert effectful == {"tally", "emit"}
    registry = builtin_registry()
    registry.register(Undeclared())
    flow = make_flow([("u", "undeclared", {})], [], registry)
    recorder = Recorder()
    original_like = ShadowReplay.from_events([], ["u"])
    result = await run_flow(
        flow,
        execution_id="ex_test",
        sink=recorder.sink,
        services=EngineServices(shadow=original_like),
    )
    assert result.status is ExecutionStatus.FAILED  # not run: nothing to replay
