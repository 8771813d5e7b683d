"""The seams between the track-agnostic use cases and the tracks.

Each track is an adapter behind these protocols; the bootstrap is the only place that picks
one. The service, the API and the run host see nothing else of Kafka or DBOS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from twintrack.domain.commands import Command
from twintrack.domain.events import Event
from twintrack.domain.execution import EventsBackend, Track


class TaskQueue(Protocol):
    """Hands an execution that was started to some worker of its track."""

    track: Track

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def prepare(self, execution_id: str, events_backend: EventsBackend) -> None:
        """At creation, before any event: what the track needs to exist first (DBOS streams
        live in the execution's workflow, so DBOS makes it, parked until start)."""
        ...

    async def enqueue(
        self,
        execution_id: str,
        attempt: int,
        events_backend: EventsBackend = EventsBackend.KAFKA,
    ) -> None:
        """Deliver a task for the execution; duplicates are harmless (workers claim first).
        `events_backend` is the one `prepare` was told (what it made, if anything, is released)."""
        ...

    async def cancel(self, execution_id: str) -> None:
        """The execution ended before any worker took it (stopped, start timeout)."""
        ...


@dataclass(frozen=True)
class Refusal:
    """Why a track cannot admit new executions now."""

    #: a closed set, for the metric label: schema_missing, schema_behind, no_privilege,
    #: timeout, client_error, enqueue_failed
    cause: str
    message: str


class AdmissionProbe(Protocol):
    """Whether a track can take a new execution now, asked once per create before any row or
    event exists (DBOS: its system schema is there, current and usable by this role). Answers
    within its own short timeout (a timeout is a refusal) and may cache its answer briefly."""

    track: Track

    async def refusal(self) -> Refusal | None:
        """None when the track admits; else why not."""
        ...

    async def close(self) -> None:
        """Release what the probe holds (a connection pool of its own, if any)."""
        ...


class EventBus(Protocol):
    """An execution's event stream: append-only, indexed, replayable from any index.

    `publish` may batch; `flush` returns once everything published so far is durable.
    Writers never publish two events with the same index for one execution; `subscribe`
    still dedupes by index and orders by it, so a reader never sees a gap or a duplicate.
    """

    backend: EventsBackend
    #: The largest JSON-encoded event this backend stores. Writers check it before publishing
    #: (engine.sink.check_event_size), so an adapter never has to discover an event too large.
    max_event_bytes: int

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, event: Event, *, wait: bool = False) -> None:
        """Append the event; with `wait`, return only once this event is durable."""
        ...

    async def flush(self, execution_id: str | None = None) -> None:
        """Return once the execution's events so far (everyone's, without one) are durable;
        raise if any of them was lost. One execution's loss is never reported to another."""
        ...

    def subscribe(self, execution_id: str, from_index: int = 0) -> AsyncIterator[Event]:
        """Every event with index >= from_index, in order, ending after the terminal event."""
        ...

    async def next_index(self, execution_id: str) -> int:
        """The index after the last event durably written: where a re-run continues."""
        ...

    async def last_event(self, execution_id: str) -> Event | None:
        """The durably written event with the highest index (None when there is none).

        A re-run checks it first: a worker may have died after writing the terminal event
        but before recording the ending in the row, and then the ending stands.
        """
        ...


@dataclass(frozen=True)
class CommandMessage:
    """A command as stored and delivered: `id` orders commands of one execution."""

    id: int
    execution_id: str
    command: Command
    reason: str | None = None


CommandHandler = Callable[[CommandMessage], Awaitable[None]]


class CommandChannel(Protocol):
    """Durable commands to running executions, delivered live to the worker that runs them."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, execution_id: str, command: Command, reason: str | None = None) -> int:
        """Store the command durably and notify listeners; returns its id."""
        ...

    async def pending(self, execution_id: str, after_id: int = 0) -> list[CommandMessage]:
        """Commands stored for the execution with id > after_id, oldest first."""
        ...

    def watch(self, execution_id: str, handler: CommandHandler) -> Callable[[], None]:
        """Call `handler` for each new command of the execution; returns an unsubscribe."""
        ...

    async def replay_and_watch(
        self, execution_id: str, handler: CommandHandler
    ) -> Callable[[], None]:
        """Stored commands, then live ones, each exactly once in order: what a worker that
        just took an execution needs. Returns an unsubscribe."""
        ...


class EventsExpired(LookupError):
    """`subscribe` from an index whose events the bus no longer holds (Kafka retention, a lost
    log): raised before any event, so a subscriber never waits forever or misses events."""

    def __init__(self, execution_id: str, from_index: int, earliest: int | None, why: str) -> None:
        self.execution_id = execution_id
        self.from_index = from_index
        self.earliest_index = earliest
        still = "none is retained" if earliest is None else f"the earliest retained is {earliest}"
        super().__init__(
            f"events of {execution_id} from index {from_index} are no longer in Kafka ({why}); "
            f"{still}"
        )
