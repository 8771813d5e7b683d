"""Dataflow scheduling of one execution, with controls, timeouts, error ports and skips.

A node runs once every connected input has a value, up to `max_concurrency` at a time, in
declaration order among the ready ones (so runs are reproducible). A node that finishes
without a value on a port dooms the nodes fed by that port: they are skipped, and so on
downstream. A failure whose `error` port is connected is handled (the message flows on);
otherwise the execution ends `failed` once every branch that can still run has finished.
Independent branches keep running after an unhandled failure: that keeps the outcome of a
flow independent of timing, which is what lets both tracks be compared event for event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twintrack.domain.commands import Command
from twintrack.domain.events import Event, EventType
from twintrack.domain.execution import ExecutionOptions, ExecutionStatus, TriggerEvent
from twintrack.domain.flow import ERROR_PORT, Flow, FlowNode
from twintrack.engine.control import ControlMessage, ExecutionControl
from twintrack.engine.scope import scope_skips
from twintrack.engine.services import EngineServices
from twintrack.engine.shadow import ShadowReplay, replay_reason
from twintrack.engine.sink import EventSink, EventTooLarge
from twintrack.nodes.base import Counters, InfrastructureError, NodeError


@dataclass(frozen=True)
class ExecutionError:
    message: str
    node_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "node_id": self.node_id}


@dataclass(frozen=True)
class ExecutionResult:
    status: ExecutionStatus
    outputs: dict[str, Any] = field(default_factory=dict)
    error: ExecutionError | None = None


@dataclass(frozen=True)
class _Outcome:
    node_id: str
    outputs: Mapping[str, Any] | None  # None when the node failed
    error: str | None
    duration_ms: float


class _NodeContext:
    """The NodeContext protocol for one node run."""

    def __init__(self, run: _Run, node: FlowNode) -> None:
        self._run = run
        self._node = node

    @property
    def execution_id(self) -> str:
        return self._run.execution_id

    @property
    def node_id(self) -> str:
        return self._node.id

    @property
    def attempt(self) -> int:
        return self._run.services.attempt

    @property
    def trigger_events(self) -> Sequence[TriggerEvent]:
        return self._run.trigger_events

    @property
    def execution_input(self) -> tuple[bool, Any]:
        inputs = self._run.options.inputs
        return (True, inputs[self._node.id]) if self._node.id in inputs else (False, None)

    @property
    def counters(self) -> Counters:
        return self._run.services.counters

    async def log(self, message: str) -> None:
        await self._run.sink.emit(
            EventType.NODE_LOG, {"node_id": self._node.id, "message": message}
        )

    async def set_output(self, name: str, value: Any) -> None:
        self._run.outputs[name] = value

    async def spawn_child(self, *, event: str, payload: Any, flow_id: str | None) -> str:
        spawner = self._run.services.children
        if spawner is None:
            raise NodeError("child executions are not available in this run")
        try:
            child = await spawner.spawn(
                node_id=self._node.id, event=event, payload=payload, flow_id=flow_id
            )
        except EventTooLarge as exc:  # the child's `execution.created`: this node's payload
            raise EventTooLarge(exc.event_type, self._node.id, exc.size, exc.limit) from exc
        if child.announced:
            return child.execution_id
        await self._run.sink.emit(
            EventType.CHILD_SPAWNED,
            {
                "node_id": self._node.id,
                "child_execution_id": child.execution_id,
                "flow_id": child.flow_id,
                "event": event,
                "depth": child.depth,
            },
        )
        return child.execution_id


class _Run:
    def __init__(
        self,
        flow: Flow,
        *,
        execution_id: str,
        options: ExecutionOptions,
        sink: EventSink,
        control: ExecutionControl,
        services: EngineServices,
        trigger_events: Sequence[TriggerEvent],
    ) -> None:
        self.flow = flow
        self.execution_id = execution_id
        self.options = options
        self.sink = sink
        self.control = control
        self.services = services
        self.trigger_events = list(trigger_events)
        self.outputs: dict[str, Any] = {}
        self.values: dict[str, dict[str, Any]] = {n: {} for n in flow.nodes}
        self.finished: set[str] = set()
        self.ready: set[str] = set()
        self.running: dict[asyncio.Task[_Outcome], str] = {}
        self.paused = False
        self.step_permits = 0
        self.breakpoints = set(options.breakpoints)
        self.breakpoints_hit: set[str] = set()
        self.first_failure: ExecutionError | None = None
        self.stop_reason: str | None = None

    # -- the main loop -------------------------------------------------------------------

    async def execute(self, start_data: dict[str, Any]) -> ExecutionResult:
        await self.sink.emit(EventType.EXECUTION_STARTED, start_data)
        for node_id, reason in scope_skips(self.flow, self.trigger_events).items():
            await self._skip(node_id, reason)
        for node_id in self.flow.nodes:
            if node_id not in self.finished and self._inputs_ready(node_id):
                self.ready.add(node_id)
        if self.options.debug:
            await self._set_paused(True, {"reason": "debug"})
        deadline = time.monotonic() + self.options.flow_timeout_s
        waiter: asyncio.Task[None] | None = None
        try:
            while True:
                for message in self.control.drain():
                    await self._obey(message)
                if self.stop_reason is not None:
                    return await self._stopped()
                await self._start_ready()
                if not self.running and not self.ready:
                    return await self._finished()
                if waiter is None or waiter.done():
                    waiter = asyncio.create_task(self.control.wait())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return await self._flow_timed_out()
                watched: set[asyncio.Future[Any]] = {waiter, *self.running}
                done, _ = await asyncio.wait(
                    watched, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                finished = sorted(
                    (t for t in self.running if t in done),
                    key=lambda t: self.flow.nodes[self.running[t]].index,
                )
                for task in finished:
                    del self.running[task]
                    await self._complete(task.result())
        finally:
            if waiter is not None:
                waiter.cancel()
            await self._cancel_running()

    async def _obey(self, message: ControlMessage) -> None:
        if message.command is Command.STOP:
            self.stop_reason = self.control.stop_reason or message.reason or "stopped"
        elif message.command is Command.PAUSE and not self.paused:
            await self._set_paused(True, {"reason": "command"})
        elif message.command is Command.RESUME and self.paused:
            await self._set_paused(False, {})
        elif message.command is Command.STEP and self.paused:
            self.step_permits += 1

    async def _set_paused(self, paused: bool, data: dict[str, Any]) -> None:
        self.paused = paused
        self.step_permits = 0
        await self.sink.emit(
            EventType.EXECUTION_PAUSED if paused else EventType.EXECUTION_RESUMED, data
        )

    async def _start_ready(self) -> None:
        while self.ready and len(self.running) < self.options.max_concurrency:
            node_id = min(self.ready, key=lambda n: self.flow.nodes[n].index)
            if (
                not self.paused
                and node_id in self.breakpoints
                and node_id not in self.breakpoints_hit
            ):
                self.breakpoints_hit.add(node_id)
                await self.sink.emit(EventType.DEBUG_BREAKPOINT, {"node_id": node_id})
                await self._set_paused(True, {"reason": "breakpoint", "node_id": node_id})
            if self.paused:
                if self.step_permits == 0:
                    return
                self.step_permits -= 1
                self.breakpoints_hit.add(node_id)
            self.ready.discard(node_id)
            node = self.flow.nodes[node_id]
            await self.sink.emit(EventType.NODE_STARTED, {"node_id": node_id, "type": node.type})
            task = asyncio.create_task(self._run_node(node), name=f"node:{node_id}")
            self.running[task] = node_id

    # -- one node ------------------------------------------------------------------------

    async def _run_node(self, node: FlowNode) -> _Outcome:
        shadow = self.services.shadow
        if shadow is not None and node.node_type.side_effects:
            return await self._replay(node, shadow)
        inputs = {**node.node_type.configured_inputs(node.config), **self.values[node.id]}
        started = time.monotonic()
        timeout = self.options.node_timeout_s
        error: str | None = None
        outputs: Mapping[str, Any] | None = None
        try:
            async with asyncio.timeout(timeout) as scope:
                outputs = await node.node_type.run(_NodeContext(self, node), node.config, inputs)
        except (NodeError, EventTooLarge) as exc:
            error = str(exc)
        except InfrastructureError:
            raise  # not the flow's failure: the run is abandoned, and recovery runs it again
        except TimeoutError as exc:
            error = (
                f"node timed out after {timeout:g}s" if scope.expired() else f"TimeoutError: {exc}"
            )
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        if outputs is not None:
            error = _check_outputs(node, outputs)
            if error is not None:
                outputs = None
        duration_ms = round((time.monotonic() - started) * 1000, 3)
        return _Outcome(node.id, outputs, error, duration_ms)

    async def _replay(self, node: FlowNode, shadow: ShadowReplay) -> _Outcome:
        """A shadow run's side-effecting node: the original's result, never a second effect."""
        recorded = shadow.recorded.get(node.id)
        shadow.replayed[node.id] = replay_reason(node.type, recorded)
        if recorded is None or not recorded.finished:
            return _Outcome(node.id, None, shadow.replayed[node.id], 0.0)
        for event_type, data in recorded.events:
            await self.sink.emit(event_type, data)
        return _Outcome(node.id, recorded.outputs, recorded.error, 0.0)

    async def _complete(self, outcome: _Outcome) -> None:
        node = self.flow.nodes[outcome.node_id]
        self.finished.add(node.id)
        if outcome.outputs is not None:
            try:
                await self.sink.emit(
                    EventType.NODE_COMPLETED,
                    {
                        "node_id": node.id,
                        "outputs": dict(outcome.outputs),
                        "duration_ms": outcome.duration_ms,
                    },
                )
            except EventTooLarge as exc:
                # Outputs no backend can store fail the node: its error branch decides.
                outcome = _Outcome(node.id, None, str(exc), outcome.duration_ms)
        if outcome.outputs is not None:
            produced = dict(outcome.outputs)
        else:
            handled = any(e.source_port == ERROR_PORT for e in self.flow.outgoing(node.id))
            await self.sink.emit(
                EventType.NODE_FAILED,
                {
                    "node_id": node.id,
                    "error": outcome.error,
                    "handled": handled,
                    "duration_ms": outcome.duration_ms,
                },
            )
            if not handled and self.first_failure is None:
                self.first_failure = ExecutionError(outcome.error or "failed", node.id)
            produced = {ERROR_PORT: outcome.error}
        await self._propagate(node.id, produced)

    async def _propagate(self, node_id: str, produced: Mapping[str, Any]) -> None:
        doomed: list[str] = []
        for edge in self.flow.outgoing(node_id):
            if edge.source_port in produced:
                self.values[edge.target][edge.target_port] = produced[edge.source_port]
                if edge.target not in self.finished and self._inputs_ready(edge.target):
                    self.ready.add(edge.target)
            elif edge.target not in self.finished:
                doomed.append(edge.target)
        for target in sorted(set(doomed), key=lambda n: self.flow.nodes[n].index):
            if target not in self.finished:
                await self._skip(target, f"input from '{node_id}' will never have a value")

    async def _skip(self, node_id: str, reason: str) -> None:
        if node_id in self.finished:
            return
        self.finished.add(node_id)
        self.ready.discard(node_id)
        await self.sink.emit(EventType.NODE_SKIPPED, {"node_id": node_id, "reason": reason})
        await self._propagate(node_id, {})

    def _inputs_ready(self, node_id: str) -> bool:
        return all(port in self.values[node_id] for port in self.flow.incoming(node_id))

    # -- endings -------------------------------------------------------------------------

    async def _cancel_running(self) -> list[str]:
        cancelled = sorted(self.running.values(), key=lambda n: self.flow.nodes[n].index)
        for task in self.running:
            task.cancel()
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)
        self.running.clear()
        return cancelled

    async def _finished(self) -> ExecutionResult:
        if self.first_failure is not None:
            return await self._fail(self.first_failure)
        try:
            await self.sink.emit(EventType.EXECUTION_COMPLETED, {"outputs": self.outputs})
        except EventTooLarge as exc:
            self.outputs = {}  # they cannot be stored: the execution fails without them
            return await self._fail(ExecutionError(f"the outputs are too large: {exc}"))
        return ExecutionResult(ExecutionStatus.COMPLETED, dict(self.outputs))

    async def _fail(self, error: ExecutionError) -> ExecutionResult:
        await self._emit_ending(EventType.EXECUTION_FAILED, {"error": error.as_dict()})
        return ExecutionResult(ExecutionStatus.FAILED, dict(self.outputs), error)

    async def _emit_ending(self, type: EventType, data: dict[str, Any]) -> None:
        """A failed or stopped ending with the outputs so far, or without them if they are too
        large to store: an execution always ends with its terminal event."""
        try:
            await self.sink.emit(type, {**data, "outputs": self.outputs})
        except EventTooLarge:
            self.outputs = {}
            await self.sink.emit(type, {**data, "outputs": {}})

    async def _flow_timed_out(self) -> ExecutionResult:
        await self._cancel_running()
        return await self._fail(
            ExecutionError(f"flow timed out after {self.options.flow_timeout_s:g}s")
        )

    async def _stopped(self) -> ExecutionResult:
        cancelled = await self._cancel_running()
        reason = self.stop_reason or "stopped"
        await self._emit_ending(
            EventType.EXECUTION_STOPPED, {"reason": reason, "cancelled_nodes": cancelled}
        )
        return ExecutionResult(ExecutionStatus.STOPPED, dict(self.outputs), ExecutionError(reason))


_ENDINGS = {
    EventType.EXECUTION_COMPLETED: ExecutionStatus.COMPLETED,
    EventType.EXECUTION_FAILED: ExecutionStatus.FAILED,
    EventType.EXECUTION_STOPPED: ExecutionStatus.STOPPED,
}


def result_from_terminal_event(event: Event) -> ExecutionResult:
    """The result a terminal event announced, for recording an ending found in the stream."""
    status = _ENDINGS[event.type]
    outputs = dict(event.data.get("outputs") or {})
    if status is ExecutionStatus.COMPLETED:
        return ExecutionResult(status, outputs)
    error = event.data.get("error") or {}
    message = error.get("message") or event.data.get("reason") or str(status)
    return ExecutionResult(status, outputs, ExecutionError(message, error.get("node_id")))


def _check_outputs(node: FlowNode, outputs: Mapping[str, Any]) -> str | None:
    """Nodes (plugins especially) may only produce their declared, JSON-encodable ports."""
    declared = set(node.node_type.output_ports(node.config))
    unknown = sorted(set(outputs) - declared)
    if unknown:
        return f"node produced undeclared output port(s): {', '.join(unknown)}"
    try:
        json.dumps(dict(outputs))
    except (TypeError, ValueError) as exc:
        return f"node outputs are not JSON-encodable: {exc}"
    return None


async def run_flow(
    flow: Flow,
    *,
    execution_id: str,
    sink: EventSink,
    control: ExecutionControl | None = None,
    options: ExecutionOptions | None = None,
    services: EngineServices | None = None,
    trigger_events: Sequence[TriggerEvent] = (),
    start_data: dict[str, Any] | None = None,
) -> ExecutionResult:
    """Run one execution of `flow` to its end: completed, failed or stopped.

    Emits `execution.started`, node and control events, and exactly one terminal event,
    all through `sink`. Cancelling the calling task cancels running nodes too.
    """
    run = _Run(
        flow,
        execution_id=execution_id,
        options=options or ExecutionOptions(),
        sink=sink,
        control=control or ExecutionControl(),
        services=services or EngineServices(),
        trigger_events=trigger_events,
    )
    return await run.execute(start_data or {})
