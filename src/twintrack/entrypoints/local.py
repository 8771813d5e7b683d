"""Run a flow, and every child it spawns, inside this process: `twintrack run`.

No queue, no database required: the same engine the workers use, with an in-process child
spawner that honours the depth cap, so a flow behaves here as it will on either track.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from twintrack.domain.events import Event, EventType
from twintrack.domain.execution import ExecutionOptions, TriggerEvent
from twintrack.domain.flow import Flow
from twintrack.domain.ids import new_execution_id
from twintrack.engine import (
    EngineServices,
    EventSequencer,
    ExecutionControl,
    ExecutionResult,
    InMemoryCounters,
    run_flow,
)
from twintrack.nodes.base import Counters, NodeError, SpawnedChild, child_depth

LOCAL_FLOW_ID = "local"
Publish = Callable[[Event], Awaitable[None]]


class _LocalSpawner:
    def __init__(self, runner: LocalRunner, parent_id: str, depth: int) -> None:
        self._runner = runner
        self._parent_id = parent_id
        self._depth = depth

    async def spawn(
        self, *, node_id: str, event: str, payload: Any, flow_id: str | None
    ) -> SpawnedChild:
        if flow_id is not None and flow_id != LOCAL_FLOW_ID:
            raise NodeError(
                f"flow '{flow_id}' is not available to `twintrack run`, which runs only the "
                "given flow (leave flow_id unset to emit to the same flow)"
            )
        depth = child_depth(self._depth, self._runner.max_depth)
        child_id = self._runner.launch(
            [TriggerEvent(name=event, payload=payload)], depth, parent_id=self._parent_id
        )
        return SpawnedChild(execution_id=child_id, flow_id=LOCAL_FLOW_ID, depth=depth)


class LocalRunner:
    """Runs a root execution and its descendants concurrently; `wait` returns the root's result."""

    def __init__(
        self,
        flow: Flow,
        publish: Publish,
        *,
        options: ExecutionOptions | None = None,
        counters: Counters | None = None,
        max_depth: int = 100,
    ) -> None:
        self.flow = flow
        self.options = options or ExecutionOptions()
        self.max_depth = max_depth
        self._publish = publish
        self._counters = counters or InMemoryCounters()
        self._tasks: dict[str, asyncio.Task[ExecutionResult]] = {}
        self._controls: dict[str, ExecutionControl] = {}
        self.root_id: str | None = None

    def launch(
        self, events: Sequence[TriggerEvent], depth: int = 0, parent_id: str | None = None
    ) -> str:
        execution_id = new_execution_id()
        control = ExecutionControl()
        self._controls[execution_id] = control
        # Children run with default options: debug and breakpoints belong to the root only.
        options = (
            self.options
            if depth == 0
            else ExecutionOptions(
                max_concurrency=self.options.max_concurrency,
                node_timeout_s=self.options.node_timeout_s,
                flow_timeout_s=self.options.flow_timeout_s,
            )
        )
        self._tasks[execution_id] = asyncio.create_task(
            self._run(execution_id, events, depth, parent_id, control, options)
        )
        return execution_id

    async def _run(
        self,
        execution_id: str,
        events: Sequence[TriggerEvent],
        depth: int,
        parent_id: str | None,
        control: ExecutionControl,
        options: ExecutionOptions,
    ) -> ExecutionResult:
        sink = EventSequencer(execution_id, self._publish)
        await sink.emit(
            EventType.EXECUTION_CREATED,
            {
                "flow_id": LOCAL_FLOW_ID,
                "depth": depth,
                "parent_id": parent_id,
                "events": [e.model_dump() for e in events],
            },
        )
        services = EngineServices(
            counters=self._counters, children=_LocalSpawner(self, execution_id, depth)
        )
        return await run_flow(
            self.flow,
            execution_id=execution_id,
            sink=sink,
            control=control,
            options=options,
            services=services,
            trigger_events=events,
        )

    async def run(self, events: Sequence[TriggerEvent] = ()) -> ExecutionResult:
        """Run the root and wait for it and every descendant to end."""
        self.root_id = self.launch(events)
        root = self._tasks[self.root_id]
        while True:
            pending = [t for t in self._tasks.values() if not t.done()]
            if not pending:
                break
            await asyncio.wait(pending)
        return root.result()

    def stop_all(self, reason: str) -> None:
        for control in self._controls.values():
            control.stop(reason)
