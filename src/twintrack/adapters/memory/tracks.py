"""In-memory TaskQueue, EventBus, CommandChannel and AdmissionProbe: the track ports without any
server.

For tests of what sits above the ports (the service, the run, the API): each records what it
was given so a test can assert on it, and the event bus keeps the subscriber contract of
core/ports.py (every event from any index, in index order, no gap, no duplicate, live or after
the fact, ending after the terminal event). Tests synchronise on
`MemoryEventBus.wait_for_subscriber`, never on sleeps.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from twintrack.core.ports import (
    AdmissionProbe,
    CommandChannel,
    CommandHandler,
    CommandMessage,
    EventBus,
    Refusal,
    TaskQueue,
)
from twintrack.domain.commands import Command
from twintrack.domain.events import Event
from twintrack.domain.execution import EventsBackend, Track


class MemoryTaskQueue:
    """Records every enqueued (execution id, attempt), in order."""

    def __init__(self, track: Track) -> None:
        self.track = track
        self.enqueued: list[tuple[str, int]] = []
        self.prepared: list[str] = []
        self.cancelled: list[str] = []
        self.started = False
        #: raised by `prepare` while set (a test: the track refuses what a create needs)
        self.refuse_prepare: Exception | None = None
        #: raised by `enqueue` while set (a test: the task does not reach the track)
        self.refuse_enqueue: Exception | None = None

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.started = False

    async def prepare(self, execution_id: str, events_backend: EventsBackend) -> None:
        if self.refuse_prepare is not None:
            raise self.refuse_prepare
        self.prepared.append(execution_id)

    async def enqueue(
        self,
        execution_id: str,
        attempt: int,
        events_backend: EventsBackend = EventsBackend.KAFKA,
    ) -> None:
        if self.refuse_enqueue is not None:
            raise self.refuse_enqueue
        self.enqueued.append((execution_id, attempt))

    async def cancel(self, execution_id: str) -> None:
        self.cancelled.append(execution_id)

    def ids(self) -> list[str]:
        return [execution_id for execution_id, _ in self.enqueued]


class MemoryEventBus:
    """Events per execution, by index; `subscribe` replays the stored ones and waits for more."""

    def __init__(
        self, backend: EventsBackend = EventsBackend.KAFKA, *, max_event_bytes: int = 1_000_000
    ) -> None:
        self.backend = backend
        self.max_event_bytes = max_event_bytes
        self.events: defaultdict[str, dict[int, Event]] = defaultdict(dict)
        self.published: list[Event] = []
        self._waiting: defaultdict[str, int] = defaultdict(int)
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def publish(self, event: Event, *, wait: bool = False) -> None:
        """Store the event; a second event with an index already stored is dropped (dedupe)."""
        async with self._changed:
            self.published.append(event)
            self.events[event.execution_id].setdefault(event.index, event)
            self._changed.notify_all()

    async def flush(self, execution_id: str | None = None) -> None:
        pass

    async def next_index(self, execution_id: str) -> int:
        stored = self.events.get(execution_id)
        return max(stored) + 1 if stored else 0

    async def last_event(self, execution_id: str) -> Event | None:
        stored = self.events.get(execution_id)
        return stored[max(stored)] if stored else None

    async def subscribe(self, execution_id: str, from_index: int = 0) -> AsyncIterator[Event]:
        stored = self.events[execution_id]
        index = from_index
        while True:
            event = await self._next(execution_id, stored, index)
            yield event
            if event.type.is_terminal:
                return
            index += 1

    async def _next(self, execution_id: str, stored: dict[int, Event], index: int) -> Event:
        async with self._changed:
            if index not in stored:
                self._waiting[execution_id] += 1
                self._changed.notify_all()
                try:
                    await self._changed.wait_for(lambda: index in stored)
                finally:
                    self._waiting[execution_id] -= 1
            return stored[index]

    async def wait_for_subscriber(self, execution_id: str, count: int = 1) -> None:
        """Return once `count` subscribers of the execution are waiting for its next event."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._waiting[execution_id] >= count)

    def of(self, execution_id: str) -> list[Event]:
        """The execution's stored events in index order."""
        stored = self.events.get(execution_id, {})
        return [stored[i] for i in sorted(stored)]


class MemoryCommandChannel:
    """Commands kept in a list (ids from 1, in send order); watchers are called at once, in
    order, before `send` returns."""

    def __init__(self) -> None:
        self.commands: list[CommandMessage] = []
        self._watchers: defaultdict[str, list[CommandHandler]] = defaultdict(list)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, execution_id: str, command: Command, reason: str | None = None) -> int:
        message = CommandMessage(len(self.commands) + 1, execution_id, command, reason)
        self.commands.append(message)
        for handler in list(self._watchers[execution_id]):
            await handler(message)
        return message.id

    async def pending(self, execution_id: str, after_id: int = 0) -> list[CommandMessage]:
        return [m for m in self.commands if m.execution_id == execution_id and m.id > after_id]

    def watch(self, execution_id: str, handler: CommandHandler) -> Callable[[], None]:
        watchers = self._watchers[execution_id]
        watchers.append(handler)

        def unsubscribe() -> None:
            if handler in watchers:
                watchers.remove(handler)

        return unsubscribe

    async def replay_and_watch(
        self, execution_id: str, handler: CommandHandler
    ) -> Callable[[], None]:
        # No await between the replay snapshot and the subscription: nothing is missed or doubled.
        stored = await self.pending(execution_id)
        unsubscribe = self.watch(execution_id, handler)
        for message in stored:
            await handler(message)
        return unsubscribe

    def of(self, execution_id: str) -> list[tuple[Command, str | None]]:
        return [(m.command, m.reason) for m in self.commands if m.execution_id == execution_id]


class MemoryAdmission:
    """`AdmissionProbe`: admits until a test sets `refusing` (and counts the checks)."""

    def __init__(self, track: Track) -> None:
        self.track = track
        self.refusing: Refusal | None = None
        self.checks = 0

    async def refusal(self) -> Refusal | None:
        self.checks += 1
        return self.refusing

    async def close(self) -> None:
        return None


@dataclass
class MemoryPorts:
    """One set of doubles: a queue per track, a bus per events backend, one command channel."""

    queues: dict[Track, MemoryTaskQueue] = field(
        default_factory=lambda: {t: MemoryTaskQueue(t) for t in Track}
    )
    buses: dict[EventsBackend, MemoryEventBus] = field(
        default_factory=lambda: {b: MemoryEventBus(b) for b in EventsBackend}
    )
    commands: MemoryCommandChannel = field(default_factory=MemoryCommandChannel)
    admission: dict[Track, MemoryAdmission] = field(
        default_factory=lambda: {Track.DBOS: MemoryAdmission(Track.DBOS)}
    )

    @classmethod
    def only(cls, tracks: Iterable[Track], backends: Iterable[EventsBackend]) -> MemoryPorts:
        """Doubles for some tracks and backends only (to test an unavailable one)."""
        return cls(
            queues={t: MemoryTaskQueue(t) for t in tracks},
            buses={b: MemoryEventBus(b) for b in backends},
        )

    def task_queues(self) -> dict[Track, TaskQueue]:
        return dict(self.queues)

    def event_buses(self) -> dict[EventsBackend, EventBus]:
        return dict(self.buses)

    def command_channel(self) -> CommandChannel:
        return self.commands

    def admission_probes(self) -> dict[Track, AdmissionProbe]:
        return dict(self.admission)
