"""Built-in node types (DESIGN §1.1) run through the engine, and the plugin registry."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from twintrack.domain.events import Event, EventType
from twintrack.domain.execution import ExecutionOptions, ExecutionStatus, TriggerEvent
from twintrack.domain.flow import Flow, validate_flow
from twintrack.engine import (
    EngineServices,
    EventSequencer,
    ExecutionError,
    ExecutionResult,
    InMemoryCounters,
    run_flow,
)
from twintrack.nodes.base import NodeConfig, NodeContext, NodeError, NodeType, SpawnedChild
from twintrack.nodes.builtin import BUILTIN_NODE_TYPES, ConstNode
from twintrack.nodes.registry import (
    ENTRY_POINT_GROUP,
    NodeRegistry,
    PluginError,
    builtin_registry,
)

REGISTRY = builtin_registry()
EXECUTION_ID = "exec-1"


def n(node_id: str, type_: str, **config: Any) -> dict[str, Any]:
    return {"id": node_id, "type": type_, "config": config}


def e(src: str, dst: str) -> dict[str, str]:
    return {"from": src, "to": dst}


def flow(
    nodes: list[dict[str, Any]],
    edges: list[dict[str, str]] | None = None,
    registry: NodeRegistry = REGISTRY,
) -> Flow:
    return validate_flow({"name": "t", "nodes": nodes, "edges": edges or []}, registry)


async def run(
    f: Flow,
    *,
    options: ExecutionOptions | None = None,
    services: EngineServices | None = None,
    trigger_events: Sequence[TriggerEvent] = (),
) -> tuple[ExecutionResult, list[Event]]:
    events: list[Event] = []

    async def publish(event: Event) -> None:
        events.append(event)

    result = await run_flow(
        f,
        execution_id=EXECUTION_ID,
        sink=EventSequencer(EXECUTION_ID, publish),
        options=options,
        services=services,
        trigger_events=trigger_events,
    )
    assert [ev.index for ev in events] == list(range(len(events)))
    assert all(ev.execution_id == EXECUTION_ID for ev in events)
    assert events[-1].type.is_terminal
    return result, events


def of_type(events: list[Event], type_: EventType) -> list[Event]:
    return [ev for ev in events if ev.type is type_]


def node_outputs(events: list[Event]) -> dict[str, dict[str, Any]]:
    """node id -> outputs, from node.completed events."""
    return {
        ev.data["node_id"]: ev.data["outputs"] for ev in of_type(events, EventType.NODE_COMPLETED)
    }


def node_errors(events: list[Event]) -> dict[str, str]:
    return {ev.data["node_id"]: ev.data["error"] for ev in of_type(events, EventType.NODE_FAILED)}


def skipped(events: list[Event]) -> list[str]:
    return [ev.data["node_id"] for ev in of_type(events, EventType.NODE_SKIPPED)]


def math_flow(op: str, a: Any, b: Any) -> Flow:
    return flow(
        [
            n("a", "const", value=a),
            n("b", "const", value=b),
            n("m", "math", op=op),
            n("o", "output", name="r"),
        ],
        [e("a.value", "m.a"), e("b.value", "m.b"), e("m.result", "o.value")],
    )


@dataclass
class FakeSpawner:
    """A ChildSpawner recording its calls; raises `error` instead when one is set."""

    error: Exception | None = None

    def __post_init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def spawn(
        self, *, node_id: str, event: str, payload: Any, flow_id: str | None
    ) -> SpawnedChild:
        self.calls.append({"event": event, "payload": payload, "flow_id": flow_id})
        if self.error is not None:
            raise self.error
        return SpawnedChild(
            execution_id=f"child-{len(self.calls)}", flow_id=flow_id or "same-flow", depth=1
        )


# -- const -----------------------------------------------------------------------------


async def test_const_emits_its_value() -> None:
    value = {"nested": [1, "two", None, True]}
    result, events = await run(
        flow([n("c", "const", value=value), n("o", "output", name="v")], [e("c.value", "o.value")])
    )
    assert result.status is ExecutionStatus.COMPLETED
    assert node_outputs(events)["c"] == {"value": value}
    assert result.outputs == {"v": value}


async def test_const_value_overridden_by_options_inputs() -> None:
    f = flow(
        [n("c", "const", value=1), n("d", "const", value=2), n("o", "output", name="v")],
        [e("c.value", "o.value")],
    )
    result, events = await run(f, options=ExecutionOptions(inputs={"c": "over"}))
    assert result.outputs == {"v": "over"}
    assert node_outputs(events)["d"] == {"value": 2}  # only the named const is overridden


async def test_const_overridden_with_null() -> None:
    f = flow([n("c", "const", value=1), n("o", "output", name="v")], [e("c.value", "o.value")])
    result, _ = await run(f, options=ExecutionOptions(inputs={"c": None}))
    assert result.outputs == {"v": None}


# -- math ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "a", "b", "expected", "kind"),
    [
        ("add", 6, 2, 8, int),
        ("sub", 6, 2, 4, int),
        ("sub", 2, 6, -4, int),
        ("mul", 6, 2, 12, int),
        ("div", 6, 2, 3.0, float),
        ("div", 7, 2, 3.5, float),
        ("add", 1.5, 2, 3.5, float),
        ("mul", 0.5, 0.5, 0.25, float),
        ("add", 10**18, 10**18, 2 * 10**18, int),
    ],
)
async def test_math_ops(op: str, a: Any, b: Any, expected: Any, kind: type) -> None:
    result, events = await run(math_flow(op, a, b))
    assert result.status is ExecutionStatus.COMPLETED
    assert result.outputs == {"r": expected}
    assert type(result.outputs["r"]) is kind
    assert node_outputs(events)["m"] == {"result": expected}


async def test_math_with_configured_inputs_and_edge_winning_over_config() -> None:
    f = flow(
        [
            n("c", "const", value=2),
            n("m", "math", op="mul", a=6, b=100),
            n("o", "output", name="r"),
        ],
        [e("c.value", "m.b"), e("m.result", "o.value")],
    )
    result, _ = await run(f)
    assert result.outputs == {"r": 12}


@pytest.mark.parametrize("zero", [0, 0.0])
async def test_math_division_by_zero_fails_the_node(zero: int | float) -> None:
    result, events = await run(math_flow("div", 1, zero))
    assert result.status is ExecutionStatus.FAILED
    assert result.error == ExecutionError("division by zero", "m")
    assert node_errors(events) == {"m": "division by zero"}
    assert skipped(events) == ["o"]
    assert result.outputs == {}


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ("x", 1, "input 'a' must be a number, got str"),
        (1, None, "input 'b' must be a number, got NoneType"),
        (True, 1, "input 'a' must be a number, got bool"),
        (1, [2], "input 'b' must be a number, got list"),
    ],
)
async def test_math_non_number_input_names_the_port(a: Any, b: Any, message: str) -> None:
    result, events = await run(math_flow("add", a, b))
    assert result.status is ExecutionStatus.FAILED
    assert result.error == ExecutionError(message, "m")
    assert node_errors(events) == {"m": message}


async def test_math_overflow_to_infinity_fails_the_node() -> None:
    result, events = await run(math_flow("mul", 1e308, 10))
    assert result.status is ExecutionStatus.FAILED
    assert node_errors(events)["m"] == "result of mul is not a finite number"


async def test_failure_on_connected_error_port_is_handled() -> None:
    f = flow(
        [
            n("m", "math", op="div", a=1, b=0),
            n("o", "output", name="result"),
            n("err", "output", name="err"),
        ],
        [e("m.result", "o.value"), e("m.error", "err.value")],
    )
    result, events = await run(f)
    assert result.status is ExecutionStatus.COMPLETED
    assert result.outputs == {"err": "division by zero"}
    (failed,) = of_type(events, EventType.NODE_FAILED)
    assert failed.data["handled"] is True
    assert skipped(events) == ["o"]


# -- template --------------------------------------------------------------------------


async def test_template_renders_inputs() -> None:
    f = flow(
        [
            n("name", "const", value="Ada"),
            n("age", "const", value=36),
            n("t", "template", template="Hello {name}, you are {age}; {name}! {{literal}}"),
            n("o", "output", name="text"),
        ],
        [e("name.value", "t.name"), e("age.value", "t.age"), e("t.text", "o.value")],
    )
    result, events = await run(f)
    assert result.outputs == {"text": "Hello Ada, you are 36; Ada! {literal}"}
    assert node_outputs(events)["t"] == {"text": "Hello Ada, you are 36; Ada! {literal}"}


async def test_template_renders_config_values_and_edges_win() -> None:
    f = flow(
        [
            n("c", "const", value="edge"),
            n("t", "template", template="{a}-{b}", values={"a": "cfg-a", "b": "cfg-b"}),
            n("o", "output", name="text"),
        ],
        [e("c.value", "t.b"), e("t.text", "o.value")],
    )
    result, _ = await run(f)
    assert result.outputs == {"text": "cfg-a-edge"}


async def test_template_without_placeholders() -> None:
    f = flow(
        [n("t", "template", template="plain"), n("o", "output", name="x")], [e("t.text", "o.value")]
    )
    result, _ = await run(f)
    assert result.outputs == {"x": "plain"}


# -- delay -----------------------------------------------------------------------------


async def test_delay_passes_its_value_after_waiting() -> None:
    ms = 60
    f = flow(
        [n("c", "const", value="v"), n("d", "delay", ms=ms), n("o", "output", name="x")],
        [e("c.value", "d.value"), e("d.value", "o.value")],
    )
    started = time.monotonic()
    result, events = await run(f)
    elapsed = time.monotonic() - started
    assert result.outputs == {"x": "v"}
    assert elapsed >= ms / 1000
    (done,) = [ev for ev in of_type(events, EventType.NODE_COMPLETED) if ev.data["node_id"] == "d"]
    assert done.data["duration_ms"] >= ms


async def test_delay_without_input_outputs_null() -> None:
    f = flow([n("d", "delay", ms=0), n("o", "output", name="x")], [e("d.value", "o.value")])
    result, _ = await run(f)
    assert result.outputs == {"x": None}


# -- fail ------------------------------------------------------------------------------


async def test_fail_fails_with_its_message() -> None:
    f = flow(
        [n("c", "const", value=1), n("f", "fail", message="boom"), n("o", "output", name="x")],
        [e("c.value", "f.value"), e("c.value", "o.value")],
    )
    result, events = await run(f)
    assert result.status is ExecutionStatus.FAILED
    assert result.error == ExecutionError("boom", "f")
    assert node_errors(events) == {"f": "boom"}
    terminal = events[-1]
    assert terminal.type is EventType.EXECUTION_FAILED
    assert terminal.data["error"] == {"message": "boom", "node_id": "f"}
    assert terminal.data["outputs"] == {"x": 1}  # the independent branch still ran
    assert result.outputs == {"x": 1}


# -- output ----------------------------------------------------------------------------


async def test_output_stores_under_its_name() -> None:
    f = flow(
        [
            n("a", "const", value=6),
            n("m", "math", op="mul", b=2),
            n("o1", "output", name="answer"),
            n("o2", "output", name="raw"),
        ],
        [e("a.value", "m.a"), e("m.result", "o1.value"), e("a.value", "o2.value")],
    )
    result, events = await run(f)
    assert result.outputs == {"answer": 12, "raw": 6}
    assert events[-1].type is EventType.EXECUTION_COMPLETED
    assert events[-1].data == {"outputs": {"answer": 12, "raw": 6}}
    assert node_outputs(events)["o1"] == {}


# -- tally -----------------------------------------------------------------------------


async def test_tally_increments_counters() -> None:
    counters = InMemoryCounters()
    f = flow(
        [
            n("t1", "tally", name="hits"),
            n("t2", "tally", name="hits"),
            n("t3", "tally", name="other"),
        ]
    )
    result, events = await run(f, services=EngineServices(counters=counters))
    assert result.status is ExecutionStatus.COMPLETED
    outs = node_outputs(events)
    assert sorted([outs["t1"]["count"], outs["t2"]["count"]]) == [1, 2]
    assert outs["t3"] == {"count": 1}
    assert counters.values["hits"] == 2
    assert counters.values["other"] == 1
    # A re-run is a new attempt: it counts again. The same attempt repeated (an increment
    # retried after a lost connection) counts once and sees the counts it produced.
    _, again = await run(f, services=EngineServices(counters=counters, attempt=2))
    assert sorted(node_outputs(again)[t]["count"] for t in ("t1", "t2")) == [3, 4]
    _, repeated = await run(f, services=EngineServices(counters=counters, attempt=2))
    assert node_outputs(repeated) == node_outputs(again)
    assert counters.values["hits"] == 4


# -- emit ------------------------------------------------------------------------------


async def test_emit_spawns_a_child() -> None:
    spawner = FakeSpawner()
    f = flow(
        [n("p", "const", value={"k": 1}), n("em", "emit", event="ping")],
        [e("p.value", "em.payload")],
    )
    result, events = await run(f, services=EngineServices(children=spawner))
    assert result.status is ExecutionStatus.COMPLETED
    assert spawner.calls == [{"event": "ping", "payload": {"k": 1}, "flow_id": None}]
    (spawned,) = of_type(events, EventType.CHILD_SPAWNED)
    assert spawned.data == {
        "node_id": "em",
        "child_execution_id": "child-1",
        "flow_id": "same-flow",
        "event": "ping",
        "depth": 1,
    }
    started = next(
        ev for ev in events if ev.type is EventType.NODE_STARTED and ev.data["node_id"] == "em"
    )
    completed = next(
        ev for ev in events if ev.type is EventType.NODE_COMPLETED and ev.data["node_id"] == "em"
    )
    assert started.index < spawned.index < completed.index


async def test_emit_to_another_flow_without_payload() -> None:
    spawner = FakeSpawner()
    result, events = await run(
        flow([n("em", "emit", event="go", flow_id="flow-2")]),
        services=EngineServices(children=spawner),
    )
    assert result.status is ExecutionStatus.COMPLETED
    assert spawner.calls == [{"event": "go", "payload": None, "flow_id": "flow-2"}]
    assert of_type(events, EventType.CHILD_SPAWNED)[0].data["flow_id"] == "flow-2"


async def test_emit_fails_when_spawner_refuses() -> None:
    message = "execution depth cap of 100 reached; cannot spawn a child"
    spawner = FakeSpawner(error=NodeError(message))
    result, events = await run(
        flow([n("em", "emit", event="ping")]), services=EngineServices(children=spawner)
    )
    assert result.status is ExecutionStatus.FAILED
    assert result.error == ExecutionError(message, "em")
    assert of_type(events, EventType.CHILD_SPAWNED) == []


async def test_emit_fails_without_a_spawner() -> None:
    result, events = await run(flow([n("em", "emit", event="ping")]))
    assert result.status is ExecutionStatus.FAILED
    assert result.error == ExecutionError("child executions are not available in this run", "em")
    assert of_type(events, EventType.CHILD_SPAWNED) == []


# -- listen ----------------------------------------------------------------------------


def listen_flow() -> Flow:
    return flow(
        [n("l", "listen", event="ping"), n("o", "output", name="got"), n("c", "const", value=1)],
        [e("l.payload", "o.value")],
    )


async def test_listen_outputs_its_event_payload() -> None:
    result, events = await run(
        listen_flow(),
        trigger_events=[
            TriggerEvent(name="other", payload=0),
            TriggerEvent(name="ping", payload={"x": 1}),
        ],
    )
    assert result.status is ExecutionStatus.COMPLETED
    assert result.outputs == {"got": {"x": 1}}
    assert node_outputs(events)["l"] == {"payload": {"x": 1}}
    assert skipped(events) == ["c"]  # outside the listener's region


async def test_listen_is_skipped_without_events() -> None:
    result, events = await run(listen_flow())
    assert result.status is ExecutionStatus.COMPLETED
    assert result.outputs == {}
    assert skipped(events) == ["l", "o"]
    assert node_outputs(events) == {"c": {"value": 1}}


# -- plugins ---------------------------------------------------------------------------


class ShoutConfig(NodeConfig):
    suffix: str = "!"


class ShoutNode(NodeType):
    type_name = "shout"
    config_model = ShoutConfig
    inputs: ClassVar[Mapping[str, bool]] = {"text": True}
    outputs = ("text",)

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        assert isinstance(config, ShoutConfig)
        return {"text": str(inputs["text"]).upper() + config.suffix}


class UndeclaredPortNode(NodeType):
    type_name = "undeclared"
    outputs = ("ok",)

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        return {"ok": 1, "extra": 2}


class NotJsonNode(NodeType):
    type_name = "notjson"
    outputs = ("ok",)

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        return {"ok": {1, 2}}


class CrashNode(NodeType):
    type_name = "crash"

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        raise RuntimeError("kaput")


@dataclass
class FakeEntryPoint:
    name: str
    value: str
    obj: Any = None
    error: Exception | None = None

    def load(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.obj


def install_entry_points(monkeypatch: pytest.MonkeyPatch, *eps: FakeEntryPoint) -> list[str]:
    """Make registry.entry_points return `eps`; returns the groups it was asked for."""
    groups: list[str] = []

    def fake_entry_points(*, group: str) -> list[FakeEntryPoint]:
        groups.append(group)
        return list(eps)

    monkeypatch.setattr("twintrack.nodes.registry.entry_points", fake_entry_points)
    return groups


def test_builtin_registry_has_every_builtin_type() -> None:
    assert REGISTRY.names() == sorted(
        ["const", "math", "template", "delay", "fail", "emit", "listen", "output", "tally"]
    )
    assert {type(t) for t in REGISTRY} == set(BUILTIN_NODE_TYPES)


def test_registering_a_duplicate_type_name_fails() -> None:
    registry = builtin_registry()
    with pytest.raises(PluginError, match="node type 'const' is already registered"):
        registry.register(ConstNode())


def test_registering_a_type_without_name_fails() -> None:
    class Nameless(NodeType):
        async def run(
            self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
        ) -> Mapping[str, Any]:
            return {}

    with pytest.raises(PluginError, match="Nameless has no type_name"):
        NodeRegistry().register(Nameless())


async def test_load_plugins_registers_a_node_type(monkeypatch: pytest.MonkeyPatch) -> None:
    groups = install_entry_points(
        monkeypatch, FakeEntryPoint("shout", "acme.nodes:ShoutNode", ShoutNode)
    )
    registry = builtin_registry()
    registry.load_plugins()
    assert groups == [ENTRY_POINT_GROUP]
    assert isinstance(registry.get("shout"), ShoutNode)
    f = flow(
        [n("c", "const", value="hi"), n("s", "shout", suffix="!!"), n("o", "output", name="x")],
        [e("c.value", "s.text"), e("s.text", "o.value")],
        registry=registry,
    )
    result, _ = await run(f)
    assert result.outputs == {"x": "HI!!"}


def test_plugin_that_is_not_a_node_type_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    install_entry_points(monkeypatch, FakeEntryPoint("bad", "acme.nodes:helper", len))
    with pytest.raises(PluginError) as caught:
        builtin_registry().load_plugins()
    assert str(caught.value) == "node plugin 'bad' (acme.nodes:helper) is not a NodeType subclass"


def test_plugin_instance_rather_than_class_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    install_entry_points(monkeypatch, FakeEntryPoint("inst", "acme:SHOUT", ShoutNode()))
    with pytest.raises(PluginError) as caught:
        builtin_registry().load_plugins()
    assert str(caught.value) == "node plugin 'inst' (acme:SHOUT) is not a NodeType subclass"


def test_plugin_that_fails_to_import_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    install_entry_points(
        monkeypatch, FakeEntryPoint("broken", "acme.missing:X", error=ImportError("no acme"))
    )
    with pytest.raises(PluginError) as caught:
        builtin_registry().load_plugins()
    assert str(caught.value) == "node plugin 'broken' (acme.missing:X) failed to load: no acme"


def test_plugin_clashing_with_a_builtin_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeConst(ShoutNode):
        type_name = "const"

    install_entry_points(monkeypatch, FakeEntryPoint("c", "acme:FakeConst", FakeConst))
    with pytest.raises(PluginError, match="node type 'const' is already registered"):
        builtin_registry().load_plugins()


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (UndeclaredPortNode, "node produced undeclared output port(s): extra"),
        (
            NotJsonNode,
            "node outputs are not JSON-encodable: Object of type set is not JSON serializable",
        ),
        (CrashNode, "RuntimeError: kaput"),
    ],
)
async def test_misbehaving_plugin_fails_its_node(plugin: type[NodeType], message: str) -> None:
    registry = builtin_registry()
    registry.register(plugin())
    f = flow(
        [n("p", plugin.type_name), n("c", "const", value=1), n("o", "output", name="x")],
        [e("c.value", "o.value")],
        registry=registry,
    )
    result, events = await run(f)
    assert result.status is ExecutionStatus.FAILED
    assert result.error == ExecutionError(message, "p")
    assert node_errors(events) == {"p": message}
    assert "p" not in node_outputs(events)
    assert result.outputs == {"x": 1}


async def test_template_renders_non_strings_as_json() -> None:
    flow = validate_flow(
        {
            "name": "t",
            "nodes": [
                {"id": "v", "type": "const", "config": {"value": {"a": [1, None, True]}}},
                {"id": "t", "type": "template", "config": {"template": "x={x} s={s}"}},
                {"id": "s", "type": "const", "config": {"value": "plain"}},
                {"id": "o", "type": "output", "config": {"name": "text"}},
            ],
            "edges": [
                {"from": "v.value", "to": "t.x"},
                {"from": "s.value", "to": "t.s"},
                {"from": "t.text", "to": "o.value"},
            ],
        },
        builtin_registry(),
    )
    events: list[Event] = []

    async def publish(event: Event) -> None:
        events.append(event)

    result = await run_flow(flow, execution_id="ex_t", sink=EventSequencer("ex_t", publish))
    assert result.outputs == {"text": 'x={"a": [1, null, true]} s=plain'}
