"""Where the engine's events go, and the sequencer that numbers them without gaps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from twintrack.domain.events import Event, EventType


class EventSink(Protocol):
    """Receives the engine's events in order; numbering is the sink's business."""

    async def emit(self, type: EventType, data: dict[str, Any]) -> Event: ...


class EventSequencer:
    """Numbers events of one execution contiguously from `next_index` and publishes them in order.

    The lock makes index assignment and publication one step, so concurrent emitters (nodes
    running side by side) can never publish index n+1 before n.
    """

    def __init__(
        self,
        execution_id: str,
        publish: Callable[[Event], Awaitable[None]],
        next_index: int = 0,
    ) -> None:
        self.execution_id = execution_id
        self.next_index = next_index
        self._publish = publish
        self._lock = asyncio.Lock()

    async def emit(self, type: EventType, data: dict[str, Any]) -> Event:
        async with self._lock:
            event = Event(
                execution_id=self.execution_id, index=self.next_index, type=type, data=data
            )
            await self._publish(event)
            self.next_index += 1
            return event
