"""Where the engine's events go, and the sequencer that numbers them without gaps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from twintrack.domain.events import Event, EventType


class EventTooLarge(ValueError):
    """An event would exceed the events backend's limit (MAX_EVENT_BYTES): never published.

    Raised by the writer, before an index is spent, so the adapters never meet such an event;
    the engine turns it into the node's (or the execution's) failure.
    """

    def __init__(self, event_type: EventType, node_id: str | None, size: int, limit: int) -> None:
        self.event_type = event_type
        self.node_id = node_id
        self.size = size
        self.limit = limit
        what = f"node '{node_id}'" if node_id else "the execution"
        super().__init__(
            f"{what} produced an event too large to store: {event_type.value} would be "
            f"{size:,} bytes, over MAX_EVENT_BYTES ({limit:,} bytes)"
        )


def check_event_size(event: Event, limit: int | None, *, extra_bytes: int = 0) -> None:
    """The one size rule for every event: its JSON encoding must fit `limit` (None: no limit).

    `extra_bytes` accounts for fields a provisional event does not carry yet."""
    if limit is None:
        return
    size = len(event.model_dump_json().encode()) + extra_bytes
    if size > limit:
        node_id = event.data.get("node_id")
        raise EventTooLarge(event.type, node_id if isinstance(node_id, str) else None, size, limit)


class EventSink(Protocol):
    """Receives the engine's events in order; numbering is the sink's business."""

    async def emit(self, type: EventType, data: dict[str, Any]) -> Event: ...


class EventSequencer:
    """Numbers events of one execution contiguously from `next_index` and publishes them in order.

    The lock makes index assignment and publication one step, so concurrent emitters (nodes
    running side by side) can never publish index n+1 before n. An event over
    `max_event_bytes` raises EventTooLarge and spends no index.
    """

    def __init__(
        self,
        execution_id: str,
        publish: Callable[[Event], Awaitable[None]],
        next_index: int = 0,
        max_event_bytes: int | None = None,
    ) -> None:
        self.execution_id = execution_id
        self.next_index = next_index
        self.max_event_bytes = max_event_bytes
        self._publish = publish
        self._lock = asyncio.Lock()

    async def emit(self, type: EventType, data: dict[str, Any]) -> Event:
        async with self._lock:
            event = Event(
                execution_id=self.execution_id, index=self.next_index, type=type, data=data
            )
            check_event_size(event, self.max_event_bytes)
            await self._publish(event)
            self.next_index += 1
            return event
