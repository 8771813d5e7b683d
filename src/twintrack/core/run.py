"""Run one execution a worker holds, whatever the track: events, status, children, the end.

The track supplies a `Lease` (may this worker still write?) and a `StatusWriter` (fenced
status moves); the runner wires the engine to the event bus, numbers events after what is
already in the stream, reports pause/resume, flushes before the end is recorded, and spawns
children through the service.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Protocol

import structlog

from twintrack.core.ports import EventBus
from twintrack.core.records import ExecutionRecord
from twintrack.core.service import ExecutionService, ParentStopping
from twintrack.core.shadow import load_replay
from twintrack.core.transient import retry_or_abandon
from twintrack.domain.events import Event, EventType
from twintrack.domain.flow import Flow
from twintrack.engine import (
    EngineServices,
    EventSequencer,
    ExecutionControl,
    ExecutionResult,
    InMemoryCounters,
    result_from_terminal_event,
    run_flow,
)
from twintrack.nodes.base import Counters, SpawnedChild
from twintrack.observability.tracing import RunSpans, queue_wait_ms

log = structlog.get_logger()
_SPAWN_BACKOFF_S = 0.2
_SPAWN_BACKOFF_MAX_S = 5.0
# How long a re-run may spend reading what the earlier attempt announced (normally milliseconds).
_ANNOUNCED_READ_S = 10.0


class LeaseLost(Exception):
    """This worker no longer holds the execution: it must stop and write nothing more."""


class Lease(Protocol):
    def check(self) -> None:
        """Raise LeaseLost when writing is no longer allowed."""
        ...


class StatusWriter(Protocol):
    async def paused(self) -> None: ...

    async def resumed(self) -> None: ...

    async def finished(self, result: ExecutionResult, next_event_index: int) -> None: ...


class _ServiceSpawner:
    """Spawns children for one run: each spawn runs to its end even if the emitting node is
    cancelled meanwhile (a stop, a timeout), so no child is left half made in `created`."""

    def __init__(
        self,
        service: ExecutionService,
        parent: ExecutionRecord,
        lease: Lease,
        control: ExecutionControl,
        announced: frozenset[str],
    ) -> None:
        self._service = service
        self._parent = parent
        self._lease = lease
        self._control = control
        self._announced = announced

    async def spawn(
        self, *, node_id: str, event: str, payload: Any, flow_id: str | None
    ) -> SpawnedChild:
        async def spawn_once() -> SpawnedChild:
            return await self._service.spawn_child(
                self._parent, node_id=node_id, event=event, payload=payload, flow_id=flow_id
            )

        backoff = _SPAWN_BACKOFF_S
        while True:
            self._lease.check()
            # Safe to repeat: the child's id is deterministic and starting it twice is harmless.
            # A database outage is retried, then abandons the run to recovery (never a node
            # failure).
            spawning = asyncio.ensure_future(
                retry_or_abandon(spawn_once, what=f"spawn child of {self._parent.id}")
            )
            spawning.add_done_callback(_retrieve)
            try:
                child = await asyncio.shield(spawning)
            except TimeoutError:
                # A stalled dependency (BrokerUnavailable is a TimeoutError) is waited out
                # under the lease, within the node's own timeout: an infrastructure fault must
                # not fail the node. The spawn is idempotent (the child's id is deterministic).
                log.warning("child spawn timed out; trying again", parent_id=self._parent.id)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _SPAWN_BACKOFF_MAX_S)
                continue
            except ParentStopping as stopping:
                # The parent's stop is on its way to this engine; obey it now and let the engine
                # cancel this node, rather than fail it.
                self._control.stop(stopping.reason)
                await asyncio.Event().wait()
                raise  # not reached: the engine cancels the node
            break
        if child.execution_id in self._announced:
            return dataclasses.replace(child, announced=True)
        return child


def _retrieve(task: asyncio.Future[SpawnedChild]) -> None:
    """A spawn whose node was cancelled finishes alone: its outcome must not go unread."""
    if not task.cancelled():
        task.exception()


async def _announced_children(bus: EventBus, execution_id: str, last: Event) -> frozenset[str]:
    """Children an earlier attempt already announced (`child.spawned` up to `last`): a re-run
    finds them again and must not announce them twice."""
    found: set[str] = set()
    events = bus.subscribe(execution_id, 0)
    try:
        async with asyncio.timeout(_ANNOUNCED_READ_S):
            async for event in events:
                if event.type is EventType.CHILD_SPAWNED:
                    found.add(str(event.data["child_execution_id"]))
                if event.index >= last.index:
                    break
    except TimeoutError:
        # A stream that cannot be read to its end must not hold the re-run up: at worst a
        # child is announced twice.
        log.warning("could not read the earlier attempt's events", execution_id=execution_id)
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
    return frozenset(found)


class _LeasedSink:
    """Numbers and publishes events under the lease, and reports pause/resume to the row."""

    def __init__(
        self,
        record: ExecutionRecord,
        bus: EventBus,
        lease: Lease,
        status: StatusWriter,
        at: int,
        spans: RunSpans,
    ) -> None:
        self._bus = bus
        self._spans = spans
        self._lease = lease
        self._status = status
        self.sequencer = EventSequencer(
            record.id, self._publish, next_index=at, max_event_bytes=bus.max_event_bytes
        )

    async def _publish(self, event: Event) -> None:
        self._lease.check()
        await self._bus.publish(event)

    async def emit(self, type: EventType, data: dict[str, Any]) -> Event:
        event = await self.sequencer.emit(type, data)
        self._spans.see(event)
        if type is EventType.EXECUTION_PAUSED:
            await self._status.paused()
        elif type is EventType.EXECUTION_RESUMED:
            await self._status.resumed()
        return event


async def run_execution(
    *,
    service: ExecutionService,
    record: ExecutionRecord,
    flow: Flow,
    bus: EventBus,
    control: ExecutionControl,
    lease: Lease,
    status: StatusWriter,
    counters: Counters,
    worker_id: str,
) -> ExecutionResult:
    """Run the execution to its end and record it. Raises LeaseLost if the lease went away.

    A first attempt continues after the service's own events (created, queued); a re-run asks
    the bus where the stream ends, announces itself with `execution.retrying`, and goes on
    from there, so nothing already delivered is repeated or renumbered.
    """
    start_index = record.next_event_index
    announced: frozenset[str] = frozenset()
    if record.attempt > 1:
        last = await bus.last_event(record.id)
        if last is not None and last.type.is_terminal:
            # The previous attempt ended and wrote so, but died before recording it.
            ended = result_from_terminal_event(last)
            await status.finished(ended, last.index + 1)
            return ended
        if last is not None:
            start_index = max(start_index, last.index + 1)
            announced = await _announced_children(bus, record.id, last)
    spans = RunSpans(
        execution_id=record.id,
        track=record.track.value,
        attempt=record.attempt,
        worker_id=worker_id,
        traceparent=record.traceparent,
        events_backend=record.events_backend.value,
        queue_wait_ms=queue_wait_ms(record),
    )
    services = EngineServices(
        counters=counters,
        children=_ServiceSpawner(service, record, lease, control, announced),
        attempt=record.attempt,
    )
    if record.shadow_of is not None:
        # Side effects off: effectful nodes replay the original; nothing else may count or
        # spawn (a counter kept in memory, no spawner).
        services = EngineServices(
            counters=InMemoryCounters(),
            children=None,
            attempt=record.attempt,
            shadow=await load_replay(service, record, flow),
        )
    with spans:
        sink = _LeasedSink(record, bus, lease, status, start_index, spans)
        if record.attempt > 1:
            await sink.emit(EventType.EXECUTION_RETRYING, {"attempt": record.attempt})
        result = await run_flow(
            flow,
            execution_id=record.id,
            sink=sink,
            control=control,
            options=record.options,
            services=services,
            trigger_events=record.trigger_events,
            start_data={"attempt": record.attempt, "worker_id": worker_id, "track": record.track},
        )
        lease.check()
        with spans.flushing():
            await bus.flush(record.id)
        await status.finished(result, sink.sequencer.next_index)
    log.info(
        "execution finished",
        execution_id=record.id,
        status=result.status.value,
        attempt=record.attempt,
    )
    return result
