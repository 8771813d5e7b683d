"""KafkaEventBus: execution events on one Kafka topic, keyed by execution id, batched.

Writers batch through the producer's linger (KAFKA_EVENTS_LINGER_MS / _BATCH_SIZE); `flush`
is the durability point workers use before an execution is marked terminal. Each execution's
first event (index 0) is written and acknowledged before anything else of it, and its offset is
recorded in `kafka_event_logs`, so readers (event_reader.py) seek there instead of scanning.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.domain.events import Event
from twintrack.domain.execution import EventsBackend
from twintrack.store.tables import KafkaEventLogRow
from twintrack.tracks.kafka.clients import KafkaConfig, make_consumer, make_producer
from twintrack.tracks.kafka.event_reader import (
    ConsumerFactory,
    EventBusClosed,
    EventReader,
    record_headers,
)

__all__ = ["EventBusClosed", "EventPublishError", "KafkaEventBus"]

Ack = asyncio.Future[Any]  # resolves to aiokafka's RecordMetadata once the broker acknowledged


class EventPublishError(RuntimeError):
    """Events published without waiting were not acknowledged; raised by `flush` or `close`."""


class KafkaEventBus:
    """The EventBus port on Kafka (see ports.EventBus for the contract)."""

    backend = EventsBackend.KAFKA

    def __init__(
        self,
        config: KafkaConfig,
        sessions: async_sessionmaker[AsyncSession],
        *,
        consumer_factory: ConsumerFactory = make_consumer,
        log_wait_s: float = 5.0,
    ) -> None:
        self._config = config
        self._sessions = sessions
        self._reader = EventReader(
            config, sessions, consumer_factory=consumer_factory, log_wait_s=log_wait_s
        )
        # Batched events linger; waited ones (created, queued, stopped under a row lock) would
        # pay that linger on every call, so they go through a second, linger-0 producer.
        self._batched: AIOKafkaProducer | None = None
        self._urgent: AIOKafkaProducer | None = None
        self._pending: set[Ack] = set()
        self._last_batched: dict[str, Ack] = {}
        self._failures: list[BaseException] = []
        self._closed = False

    async def start(self) -> None:
        if self._batched is not None:
            return
        if self._closed:
            raise EventBusClosed("a closed event bus cannot be restarted")
        batched, urgent = make_producer(self._config), make_producer(self._config, linger_ms=0)
        await batched.start()
        try:
            await urgent.start()
        except BaseException:
            await batched.stop()
            raise
        self._batched, self._urgent = batched, urgent

    async def close(self) -> None:
        """Stop readers and producers (stopping delivers what still lingers); idempotent."""
        if self._closed:
            return
        self._closed = True
        producers = [p for p in (self._batched, self._urgent) if p is not None]
        try:
            await self._reader.close()
        finally:
            for producer in producers:
                await producer.stop()
        self._raise_failures()

    async def publish(self, event: Event, *, wait: bool = False) -> None:
        """Append the event; with `wait` (always for index 0), return once it is acknowledged.

        A waited event first waits for this execution's earlier batched events, so "acked"
        also holds for everything before it and the two producers never reorder an execution.
        """
        if self._batched is None or self._urgent is None or self._closed:
            raise EventBusClosed("publish on an event bus that is not started (or closed)")
        execution_id = event.execution_id
        message: dict[str, Any] = {
            "key": execution_id.encode(),
            "value": event.model_dump_json().encode(),
            "headers": record_headers(event.index, event.type.value),
        }
        if not wait and event.index != 0:
            ack = await self._batched.send(self._config.events_topic, **message)
            self._track(ack, execution_id)
            return
        earlier = self._last_batched.get(execution_id)
        if earlier is not None:
            await asyncio.shield(earlier)
        ack = await self._urgent.send(self._config.events_topic, **message)
        self._track(ack, None)
        metadata = await asyncio.shield(ack)
        if event.index == 0:
            await self._record_log_start(execution_id, metadata)

    async def flush(self) -> None:
        """Return once everything published so far is acknowledged; raise if anything failed."""
        if self._pending:
            await asyncio.wait(list(self._pending))
        self._raise_failures()

    def subscribe(self, execution_id: str, from_index: int = 0) -> AsyncGenerator[Event, None]:
        """Every event with index >= from_index, in order, ending after the terminal event.

        Closing the generator (or cancelling its reader) stops its consumer at once.
        """
        return self._reader.events(execution_id, from_index)

    async def next_index(self, execution_id: str) -> int:
        return await self._reader.next_index(execution_id)

    async def last_event(self, execution_id: str) -> Event | None:
        return await self._reader.last_event(execution_id)

    # -- internals -------------------------------------------------------------------------

    def _track(self, ack: Ack, batched_for: str | None) -> None:
        """Follow an ack until it settles; `batched_for` is None for a waited send, whose
        failure its caller already got (so it is not reported again to someone else's flush)."""
        self._pending.add(ack)
        if batched_for is not None:
            self._last_batched[batched_for] = ack
        ack.add_done_callback(partial(self._settled, batched_for))

    def _settled(self, batched_for: str | None, ack: Ack) -> None:
        self._pending.discard(ack)
        if batched_for is None:
            return
        if self._last_batched.get(batched_for) is ack:
            del self._last_batched[batched_for]
        if ack.cancelled():
            self._failures.append(asyncio.CancelledError("event send was cancelled"))
        elif (error := ack.exception()) is not None:
            self._failures.append(error)

    def _raise_failures(self) -> None:
        if self._failures:
            failures, self._failures = self._failures, []
            raise EventPublishError(
                f"{len(failures)} event(s) were not acknowledged by Kafka: {failures[0]!r}"
            ) from failures[0]

    async def _record_log_start(self, execution_id: str, metadata: Any) -> None:
        """Remember where index 0 landed; a retried create must not move it (first one wins)."""
        statement = (
            insert(KafkaEventLogRow)
            .values(
                execution_id=execution_id,
                topic=metadata.topic,
                partition=metadata.partition,
                first_offset=metadata.offset,
            )
            .on_conflict_do_nothing(index_elements=[KafkaEventLogRow.execution_id])
        )
        async with self._sessions.begin() as session:
            await session.execute(statement)
