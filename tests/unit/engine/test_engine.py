"""The engine's scheduling, timeouts, error handling, scoping and controls, without servers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import pytest

from twintrack.domain.events import Event, EventType
from twintrack.domain.execution import ExecutionOptions, ExecutionStatus, TriggerEvent
from twintrack.domain.flow import Flow, validate_flow
from twintrack.engine import (
    EngineServices,
    EventSequencer,
    ExecutionControl,
    ExecutionResult,
    run_flow,
)
from twintrack.nodes.base import NodeConfig, NodeContext, NodeType
from twintrack.nodes.registry import NodeRegistry, builtin_registry

T = EventType


class Gate:
    """Shared state for `probe` nodes: how many run now, the most at once, and a release."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self.release = asyncio.Event()
        self.changed = asyncio.Condition()

    async def _set(self, delta: int) -> None:
        async with self.changed:
            self.current += delta
            self.peak = max(self.peak, self.current)
            self.changed.notify_all()

    async def wait_running(self, n: int, timeout: float = 5) -> None:
        async def _wait() -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: self.current == n)

        await asyncio.wait_for(_wait(), timeout)


class ProbeConfig(NodeConfig):
    pass


class ProbeNode(NodeType):
    """Blocks until the test opens the gate, recording concurrency while it waits."""

    type_name = "probe"
    config_model = ProbeConfig
    inputs: ClassVar[Mapping[str, bool]] = {"value": False}
    outputs = ("value",)
    gate: ClassVar[Gate]

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        gate = self.gate
        await gate._set(+1)
        try:
            await gate.release.wait()
        finally:
            gate.current -= 1
        return {"value": inputs.get("value")}


def registry_with_probe(gate: Gate) -> NodeRegistry:
    registry = builtin_registry()
    ProbeNode.gate = gate
    registry.register(ProbeNode())
    return registry


class Recorder:
    """An event sink that keeps every event and lets a test wait for one to appear."""

    def __init__(self, next_index: int = 0) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Condition()
        self.sink = EventSequencer("ex_test", self._publish, next_index=next_index)

    async def _publish(self, event: Event) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[list[Event]], bool], timeout: float = 5) -> None:
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.events))

        await asyncio.wait_for(_wait(), timeout)

    def types(self) -> list[str]:
        return [e.type.value for e in self.events]

    def of(self, type: EventType) -> list[Event]:
        return [e for e in self.events if e.type is type]

    def nodes(self, type: EventType) -> list[str]:
        return [e.data["node_id"] for e in self.of(type)]


def has(
    type: EventType, node_id: str | None = None, count: int = 1
) -> Callable[[list[Event]], bool]:
    def check(events: list[Event]) -> bool:
        hits = [
            e
            for e in events
            if e.type is type and (node_id is None or e.data.get("node_id") == node_id)
        ]
        return len(hits) >= count

    return check


def make_flow(
    nodes: list[tuple[str, str, dict[str, Any]]],
    edges: list[tuple[str, str]],
    registry: NodeRegistry | None = None,
) -> Flow:
    return validate_flow(
        {
            "name": "t",
            "nodes": [{"id": i, "type": t, "config": c} for i, t, c in nodes],
            "edges": [{"from": a, "to": b} for a, b in edges],
        },
        registry or builtin_registry(),
    )


def start(
    flow: Flow,
    recorder: Recorder,
    control: ExecutionControl | None = None,
    **options: Any,
) -> asyncio.Task[ExecutionResult]:
    events = options.pop("trigger_events", ())
    return asyncio.create_task(
        run_flow(
            flow,
            execution_id="ex_test",
            sink=recorder.sink,
            control=control,
            options=ExecutionOptions(**options),
            services=EngineServices(),
            trigger_events=events,
        )
    )


async def run(flow: Flow, **options: Any) -> tuple[ExecutionResult, Recorder]:
    recorder = Recorder()
    result = await asyncio.wait_for(start(flow, recorder, **options), 10)
    return result, recorder


def chain(n: int, ms: int = 0) -> list[tuple[str, str, dict[str, Any]]]:
    return [(f"n{i}", "delay", {"ms": ms}) for i in range(n)]


def chain_edges(n: int) -> list[tuple[str, str]]:
    return [(f"n{i}.value", f"n{i + 1}.value") for i in range(n - 1)]


# -- events ------------------------------------------------------------------------------


async def test_event_indices_are_contiguous_from_the_given_start() -> None:
    recorder = Recorder(next_index=3)
    flow = make_flow(chain(4), chain_edges(4))
    result = await start(flow, recorder)
    assert result.status is ExecutionStatus.COMPLETED
    assert [e.index for e in recorder.events] == list(range(3, 3 + len(recorder.events)))
    assert recorder.types()[0] == "execution.started"
    assert recorder.types()[-1] == "execution.completed"
    assert sum(e.type.is_terminal for e in recorder.events) == 1


# -- scheduling --------------------------------------------------------------------------


async def test_concurrency_never_exceeds_max_concurrency() -> None:
    gate = Gate()
    registry = registry_with_probe(gate)
    flow = make_flow([(f"p{i}", "probe", {}) for i in range(10)], [], registry)
    recorder = Recorder()
    task = start(flow, recorder, max_concurrency=3)
    await gate.wait_running(3)
    assert len(recorder.of(T.NODE_STARTED)) == 3
    gate.release.set()
    result = await asyncio.wait_for(task, 5)
    assert result.status is ExecutionStatus.COMPLETED
    assert gate.peak == 3
    assert len(recorder.of(T.NODE_COMPLETED)) == 10


async def test_fan_out_runs_branches_concurrently() -> None:
    gate = Gate()
    registry = registry_with_probe(gate)
    nodes = [("seed", "const", {"value": 7})] + [(f"b{i}", "probe", {}) for i in range(8)]
    edges = [("seed.value", f"b{i}.value") for i in range(8)]
    recorder = Recorder()
    task = start(make_flow(nodes, edges, registry), recorder, max_concurrency=8)
    await gate.wait_running(8)
    assert recorder.nodes(T.NODE_COMPLETED) == ["seed"]
    gate.release.set()
    result = await asyncio.wait_for(task, 5)
    assert result.status is ExecutionStatus.COMPLETED
    assert sorted(e.data["outputs"]["value"] for e in recorder.of(T.NODE_COMPLETED)) == [7] * 9


async def test_diamond_join_waits_for_both_sides() -> None:
    nodes: list[tuple[str, str, dict[str, Any]]] = [
        ("x", "const", {"value": 3}),
        ("slow", "delay", {"ms": 30}),
        ("double", "math", {"op": "mul", "b": 2}),
        ("sum", "math", {"op": "add"}),
        ("out", "output", {"name": "r"}),
    ]
    edges = [
        ("x.value", "slow.value"),
        ("x.value", "double.a"),
        ("slow.value", "sum.a"),
        ("double.result", "sum.b"),
        ("sum.result", "out.value"),
    ]
    result, rec = await run(make_flow(nodes, edges))
    assert result.outputs == {"r": 9}
    started_sum = next(e.index for e in rec.of(T.NODE_STARTED) if e.data["node_id"] == "sum")
    done = {e.data["node_id"]: e.index for e in rec.of(T.NODE_COMPLETED)}
    assert started_sum > done["slow"]
    assert started_sum > done["double"]


async def test_ready_nodes_start_in_declaration_order() -> None:
    nodes = [
        ("c", "const", {"value": 1}),
        ("a", "const", {"value": 2}),
        ("b", "const", {"value": 3}),
    ]
    _, rec = await run(make_flow(nodes, []), max_concurrency=1)
    assert rec.nodes(T.NODE_STARTED) == ["c", "a", "b"]


# -- timeouts ----------------------------------------------------------------------------


async def test_node_timeout_fails_the_node() -> None:
    flow = make_flow([("wait", "delay", {"ms": 60_000})], [])
    result, rec = await run(flow, node_timeout_s=0.05)
    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert result.error.node_id == "wait"
    assert "timed out after 0.05s" in result.error.message
    assert rec.of(T.NODE_FAILED)[0].data["error"] == "node timed out after 0.05s"


async def test_node_timeout_can_be_handled_by_the_error_port() -> None:
    flow = make_flow(
        [("wait", "delay", {"ms": 60_000}), ("out", "output", {"name": "why"})],
        [("wait.error", "out.value")],
    )
    result, _ = await run(flow, node_timeout_s=0.05)
    assert result.status is ExecutionStatus.COMPLETED
    assert result.outputs == {"why": "node timed out after 0.05s"}


async def test_flow_timeout_cancels_running_nodes_and_fails() -> None:
    flow = make_flow([("a", "delay", {"ms": 60_000}), ("b", "delay", {"ms": 60_000})], [])
    result, rec = await run(flow, flow_timeout_s=0.1)
    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert result.error.message == "flow timed out after 0.1s"
    assert result.error.node_id is None
    assert rec.types()[-1] == "execution.failed"
    assert not rec.of(T.NODE_COMPLETED)


# -- errors and skips --------------------------------------------------------------------


async def test_handled_error_flows_on_the_error_branch_and_skips_the_success_branch() -> None:
    nodes = [
        ("boom", "fail", {"message": "nope"}),
        ("on_error", "template", {"template": "caught: {e}"}),
        ("err_out", "output", {"name": "caught"}),
        ("ok", "output", {"name": "ok"}),
    ]
    flow = make_flow(
        [*nodes, ("src", "const", {"value": 1}), ("pass", "delay", {"ms": 0})],
        [
            ("boom.error", "on_error.e"),
            ("on_error.text", "err_out.value"),
            ("src.value", "pass.value"),
            ("pass.value", "ok.value"),
        ],
    )
    result, rec = await run(flow)
    assert result.status is ExecutionStatus.COMPLETED
    assert result.outputs == {"caught": "caught: nope", "ok": 1}
    assert rec.of(T.NODE_FAILED)[0].data["handled"] is True


async def test_success_skips_nodes_hanging_off_the_error_port() -> None:
    flow = make_flow(
        [("x", "const", {"value": 1}), ("on_err", "output", {"name": "err"})],
        [("x.error", "on_err.value")],
    )
    result, rec = await run(flow)
    assert result.status is ExecutionStatus.COMPLETED
    assert rec.nodes(T.NODE_SKIPPED) == ["on_err"]
    assert result.outputs == {}


async def test_unhandled_failure_fails_the_execution_but_independent_branches_finish() -> None:
    flow = make_flow(
        [
            ("src", "const", {"value": 5}),
            ("boom", "fail", {"message": "kaput"}),
            ("other", "delay", {"ms": 20}),
            ("other_out", "output", {"name": "other"}),
        ],
        [
            ("src.value", "boom.value"),
            ("src.value", "other.value"),
            ("other.value", "other_out.value"),
        ],
    )
    result, rec = await run(flow)
    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert (result.error.message, result.error.node_id) == ("kaput", "boom")
    assert result.outputs == {"other": 5}
    assert rec.of(T.NODE_FAILED)[0].data["handled"] is False
    assert rec.events[-1].data["error"] == {"message": "kaput", "node_id": "boom"}


async def test_skips_propagate_down_a_chain_after_an_unhandled_failure() -> None:
    flow = make_flow(
        [
            ("boom", "fail", {"message": "x"}),
            ("a", "template", {"template": "{v}"}),
            ("b", "template", {"template": "{v}"}),
            ("c", "output", {"name": "c"}),
            ("side", "const", {"value": "still runs"}),
            ("side_out", "output", {"name": "side"}),
        ],
        [
            ("boom.error", "a.v"),
            ("a.text", "b.v"),
            ("b.text", "c.value"),
            ("side.value", "side_out.value"),
        ],
    )
    # boom.error is connected, so this failure is handled and nothing is skipped ...
    result, rec = await run(flow)
    assert result.status is ExecutionStatus.COMPLETED
    assert result.outputs == {"c": "x", "side": "still runs"}
    # ... while a failure with no error edge dooms everything fed by it
    flow = make_flow(
        [
            ("src", "const", {"value": 1}),
            ("div", "math", {"op": "div", "b": 0}),
            ("a", "template", {"template": "{v}"}),
            ("b", "template", {"template": "{v}"}),
            ("c", "output", {"name": "c"}),
            ("side", "const", {"value": "still runs"}),
            ("side_out", "output", {"name": "side"}),
        ],
        [
            ("src.value", "div.a"),
            ("div.result", "a.v"),
            ("a.text", "b.v"),
            ("b.text", "c.value"),
            ("side.value", "side_out.value"),
        ],
    )
    result, rec = await run(flow)
    assert result.status is ExecutionStatus.FAILED
    assert rec.nodes(T.NODE_SKIPPED) == ["a", "b", "c"]
    assert result.outputs == {"side": "still runs"}
    assert rec.types()[-1] == "execution.failed"


# -- event scoping -----------------------------------------------------------------------


def scoped_flow() -> Flow:
    return make_flow(
        [
            ("greeting", "const", {"value": "hello"}),
            ("spawn", "emit", {"event": "ping"}),
            ("on_ping", "listen", {"event": "ping"}),
            ("suffix", "const", {"value": "!"}),
            ("join", "template", {"template": "{p}{s}"}),
            ("got", "output", {"name": "got"}),
            ("on_other", "listen", {"event": "other"}),
            ("other_out", "output", {"name": "other"}),
            ("root_only", "output", {"name": "root"}),
        ],
        [
            ("greeting.value", "spawn.payload"),
            ("on_ping.payload", "join.p"),
            ("suffix.value", "join.s"),
            ("join.text", "got.value"),
            ("on_other.payload", "other_out.value"),
            ("greeting.value", "root_only.value"),
        ],
    )


class RecordingSpawner:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, str | None]] = []

    async def spawn(self, *, node_id: str, event: str, payload: Any, flow_id: str | None) -> Any:
        from twintrack.nodes.base import SpawnedChild

        self.calls.append((event, payload, flow_id))
        return SpawnedChild(execution_id=f"ex_child{len(self.calls)}", flow_id="f", depth=1)


async def test_root_without_events_skips_listeners_and_their_downstream() -> None:
    spawner = RecordingSpawner()
    recorder = Recorder()
    result = await run_flow(
        scoped_flow(),
        execution_id="ex_test",
        sink=recorder.sink,
        services=EngineServices(children=spawner),
    )
    assert result.status is ExecutionStatus.COMPLETED
    assert set(recorder.nodes(T.NODE_SKIPPED)) == {
        "on_ping",
        "join",
        "got",
        "on_other",
        "other_out",
    }
    # `suffix` feeds a skipped node but is not downstream of a listener, so it runs
    assert set(recorder.nodes(T.NODE_COMPLETED)) == {"greeting", "spawn", "suffix", "root_only"}
    assert spawner.calls == [("ping", "hello", None)]
    spawned = recorder.of(T.CHILD_SPAWNED)[0].data
    assert spawned["child_execution_id"] == "ex_child1"
    assert spawned["node_id"] == "spawn"


async def test_child_runs_only_the_region_of_its_event_and_does_not_re_emit() -> None:
    spawner = RecordingSpawner()
    recorder = Recorder()
    result = await run_flow(
        scoped_flow(),
        execution_id="ex_test",
        sink=recorder.sink,
        services=EngineServices(children=spawner),
        trigger_events=[TriggerEvent(name="ping", payload="pong")],
    )
    assert result.status is ExecutionStatus.COMPLETED
    assert result.outputs == {"got": "pong!"}
    assert set(recorder.nodes(T.NODE_COMPLETED)) == {"on_ping", "suffix", "join", "got"}
    assert spawner.calls == []


# -- controls ----------------------------------------------------------------------------


async def test_debug_starts_paused_and_nothing_runs_until_resumed() -> None:
    control = ExecutionControl()
    recorder = Recorder()
    task = start(make_flow(chain(3), chain_edges(3)), recorder, control, debug=True)
    await recorder.wait_for(has(T.EXECUTION_PAUSED))
    assert recorder.types() == ["execution.started", "execution.paused"]
    assert recorder.events[-1].data == {"reason": "debug"}
    control.resume()
    result = await asyncio.wait_for(task, 5)
    assert result.status is ExecutionStatus.COMPLETED
    assert recorder.types()[2] == "execution.resumed"


async def test_step_runs_exactly_one_node_then_stays_paused() -> None:
    control = ExecutionControl()
    recorder = Recorder()
    flow = make_flow([(f"c{i}", "const", {"value": i}) for i in range(5)], [])
    task = start(flow, recorder, control, debug=True)
    await recorder.wait_for(has(T.EXECUTION_PAUSED))
    control.step()
    await recorder.wait_for(has(T.NODE_COMPLETED, "c0"))
    control.step()
    await recorder.wait_for(has(T.NODE_COMPLETED, "c1"))
    control.stop("enough")
    result = await asyncio.wait_for(task, 5)
    assert result.status is ExecutionStatus.STOPPED
    assert recorder.nodes(T.NODE_STARTED) == ["c0", "c1"]
    assert T.EXECUTION_RESUMED not in {e.type for e in recorder.events}


async def test_step_ignores_a_running_execution() -> None:
    control = ExecutionControl()
    control.step()
    recorder = Recorder()
    result = await start(make_flow(chain(2), chain_edges(2)), recorder, control)
    assert result.status is ExecutionStatus.COMPLETED
    assert T.EXECUTION_PAUSED not in {e.type for e in recorder.events}


async def test_stop_cancels_a_running_delay_at_once() -> None:
    control = ExecutionControl()
    recorder = Recorder()
    flow = make_flow(
        [("long", "delay", {"ms": 600_000}), ("after", "output", {"name": "x"})],
        [("long.value", "after.value")],
    )
    task = start(flow, recorder, control)
    await recorder.wait_for(has(T.NODE_STARTED, "long"))
    control.stop("user pressed stop")
    result = await asyncio.wait_for(task, 1)
    assert result.status is ExecutionStatus.STOPPED
    stopped = recorder.events[-1]
    assert stopped.type is T.EXECUTION_STOPPED
    assert stopped.data["reason"] == "user pressed stop"
    assert stopped.data["cancelled_nodes"] == ["long"]
    assert "after" not in recorder.nodes(T.NODE_STARTED)


async def test_stop_sent_before_the_run_starts_is_honoured_before_any_node() -> None:
    control = ExecutionControl()
    control.stop("stopped while queued")
    recorder = Recorder()
    result = await start(make_flow(chain(3), chain_edges(3)), recorder, control)
    assert result.status is ExecutionStatus.STOPPED
    assert recorder.types() == ["execution.started", "execution.stopped"]


async def test_pause_sent_before_the_run_starts_holds_before_the_first_node() -> None:
    control = ExecutionControl()
    control.pause()
    recorder = Recorder()
    task = start(make_flow(chain(2), chain_edges(2)), recorder, control)
    await recorder.wait_for(has(T.EXECUTION_PAUSED))
    assert recorder.types() == ["execution.started", "execution.paused"]
    control.resume()
    assert (await asyncio.wait_for(task, 5)).status is ExecutionStatus.COMPLETED


async def test_pause_holds_before_the_next_node_while_the_running_one_finishes() -> None:
    gate = Gate()
    registry = registry_with_probe(gate)
    flow = make_flow(
        [("first", "probe", {}), ("second", "delay", {"ms": 0})],
        [("first.value", "second.value")],
        registry,
    )
    control = ExecutionControl()
    recorder = Recorder()
    task = start(flow, recorder, control)
    await recorder.wait_for(has(T.NODE_STARTED, "first"))
    control.pause()
    await recorder.wait_for(has(T.EXECUTION_PAUSED))
    gate.release.set()
    await recorder.wait_for(has(T.NODE_COMPLETED, "first"))
    assert "second" not in recorder.nodes(T.NODE_STARTED)
    control.resume()
    result = await asyncio.wait_for(task, 5)
    assert result.status is ExecutionStatus.COMPLETED
    types = recorder.types()
    assert types.index("execution.resumed") < recorder.events.index(recorder.of(T.NODE_STARTED)[1])


async def test_breakpoint_pauses_before_its_node_and_resume_continues() -> None:
    control = ExecutionControl()
    recorder = Recorder()
    task = start(make_flow(chain(3), chain_edges(3)), recorder, control, breakpoints=["n1"])
    await recorder.wait_for(has(T.DEBUG_BREAKPOINT))
    await recorder.wait_for(has(T.EXECUTION_PAUSED))
    assert recorder.nodes(T.NODE_STARTED) == ["n0"]
    assert recorder.of(T.DEBUG_BREAKPOINT)[0].data == {"node_id": "n1"}
    assert recorder.of(T.EXECUTION_PAUSED)[0].data == {"reason": "breakpoint", "node_id": "n1"}
    control.resume()
    result = await asyncio.wait_for(task, 5)
    assert result.status is ExecutionStatus.COMPLETED
    assert recorder.nodes(T.NODE_STARTED) == ["n0", "n1", "n2"]


async def test_step_from_a_breakpoint_runs_that_node_only() -> None:
    control = ExecutionControl()
    recorder = Recorder()
    task = start(make_flow(chain(3), chain_edges(3)), recorder, control, breakpoints=["n1"])
    await recorder.wait_for(has(T.EXECUTION_PAUSED))
    control.step()
    await recorder.wait_for(has(T.NODE_COMPLETED, "n1"))
    control.stop()
    result = await asyncio.wait_for(task, 5)
    assert result.status is ExecutionStatus.STOPPED
    assert recorder.nodes(T.NODE_STARTED) == ["n0", "n1"]


async def test_stop_while_paused_ends_the_run() -> None:
    control = ExecutionControl()
    recorder = Recorder()
    task = start(make_flow(chain(2), chain_edges(2)), recorder, control, debug=True)
    await recorder.wait_for(has(T.EXECUTION_PAUSED))
    control.stop()
    result = await asyncio.wait_for(task, 1)
    assert result.status is ExecutionStatus.STOPPED
    assert recorder.nodes(T.NODE_STARTED) == []


async def test_cancelling_the_run_cancels_its_nodes() -> None:
    gate = Gate()
    flow = make_flow([("p", "probe", {})], [], registry_with_probe(gate))
    recorder = Recorder()
    task = start(flow, recorder)
    await gate.wait_running(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate.current == 0
