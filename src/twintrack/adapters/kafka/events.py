"""KafkaEventBus: execution events on one Kafka topic, keyed by execution id, batched.

Writers batch through the producer's linger (KAFKA_EVENTS_LINGER_MS / _BATCH_SIZE); `flush`
is the durability point workers use before an execution is marked terminal. Each execution's
first event (index 0) is written and acknowledged before anything else of it, and its offset is
recorded in `kafka_event_logs`, so readers (event_reader.py) seek there instead of scanning.

Batched events the broker does not acknowledge for a passing reason (a stall, a partition, a
leader move) are sent again with backoff for up to KAFKA_EVENTS_RETRY_S: the run waits in
`flush` instead of failing, and readers drop the duplicates a re-send can leave. What cannot be
delivered is blamed on its own execution only: each execution's `flush` reports its own events.
Waited events (API calls) are bounded by BROKER_CALL_TIMEOUT_S and raise `BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.kafka.clients import (
    BrokerUnavailable,
    KafkaConfig,
    is_transient,
    make_consumer,
    make_producer,
)
from twintrack.adapters.kafka.event_reader import (
    ConsumerFactory,
    EventBusClosed,
    EventReader,
    record_headers,
)
from twintrack.adapters.postgres.db import driver
from twintrack.domain.events import Event
from twintrack.domain.execution import EventsBackend

__all__ = ["BrokerUnavailable", "EventBusClosed", "EventPublishError", "KafkaEventBus"]

Ack = asyncio.Future[Any]  # resolves to aiokafka's RecordMetadata once the broker acknowledged
Delivery = asyncio.Future[None]  # one batched event: done once acked, or failed for good

log = structlog.get_logger()
_BACKOFF_FIRST_S = 0.2
# Where index 0 landed (KafkaEventLogRow); a retried create must not move it: first one wins.
_RECORD_LOG_START_SQL = (
    "INSERT INTO kafka_event_logs (execution_id, topic, partition, first_offset) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT (execution_id) DO NOTHING"
)
_BACKOFF_MAX_S = 5.0


@dataclass(frozen=True)
class _Lost:
    index: int
    error: BaseException


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
        self.max_event_bytes = config.max_event_bytes
        self._reader = EventReader(
            config, sessions, consumer_factory=consumer_factory, log_wait_s=log_wait_s
        )
        # Batched events linger; waited ones (created, queued, stopped under a row lock) would
        # pay that linger on every call, so they go through a second, linger-0 producer.
        self._batched: AIOKafkaProducer | None = None
        self._urgent: AIOKafkaProducer | None = None
        # Per execution: deliveries not yet settled (with their event's index), and the lowest
        # index it lost with the error, until reported by its flush (or its next publish).
        self._open: dict[str, dict[Delivery, int]] = {}
        self._failed: dict[str, _Lost] = {}
        self._retries: set[asyncio.Task[None]] = set()
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
        """Stop readers and producers (stopping delivers what still lingers); idempotent.

        Re-sends still waiting for the broker are abandoned: their runs are over or lost."""
        if self._closed:
            return
        self._closed = True
        producers = [p for p in (self._batched, self._urgent) if p is not None]
        for retry in list(self._retries):
            retry.cancel()
        try:
            await self._reader.close()
        finally:
            for producer in producers:
                await producer.stop()
            if self._retries:
                await asyncio.gather(*self._retries, return_exceptions=True)
        self._raise_failures(list(self._failed))

    async def publish(self, event: Event, *, wait: bool = False) -> None:
        """Append the event; with `wait` (always for index 0), return once it is acknowledged.

        A waited event first waits for this execution's earlier batched events, so "acked"
        also holds for everything before it and the two producers never reorder an execution.
        A waited event is bounded by BROKER_CALL_TIMEOUT_S (then `BrokerUnavailable`).
        """
        if self._batched is None or self._urgent is None or self._closed:
            raise EventBusClosed("publish on an event bus that is not started (or closed)")
        execution_id = event.execution_id
        self._refuse_gap(event)
        message = self._message(event)
        if not wait and event.index != 0:
            delivery: Delivery = asyncio.get_running_loop().create_future()
            self._watch(execution_id, event.index, delivery)
            ack = await self._send_batched(message, delivery)
            self._follow(ack, message, delivery, self._retry_deadline())
            return
        limit = self._config.call_timeout_s
        waited: Ack | None = None
        try:
            async with asyncio.timeout(limit):
                await self._settle(self._open.get(execution_id, ()))
                self._refuse_gap(event)  # an earlier event may have been lost meanwhile
                waited = await self._urgent.send(self._config.events_topic, **message)
                metadata = await asyncio.shield(waited)
        except TimeoutError:
            if waited is not None and event.index == 0:
                self._record_late_start(execution_id, waited)
            raise BrokerUnavailable(
                f"the broker did not acknowledge {event.type.value} of {execution_id} "
                f"within {limit:g}s"
            ) from None
        if event.index == 0:
            await self._record_log_start(execution_id, metadata)

    async def flush(self, execution_id: str | None = None) -> None:
        """Return once the execution's events published so far (everyone's, without one) are
        acknowledged; raise if any of them could not be delivered (each loss reported once)."""
        if execution_id is None:
            await self._settle([d for open_ in self._open.values() for d in open_])
            self._raise_failures(list(self._failed))
        else:
            await self._settle(self._open.get(execution_id, ()))
            self._raise_failures([execution_id])

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

    def _message(self, event: Event) -> dict[str, Any]:
        return {
            "key": event.execution_id.encode(),
            "value": event.model_dump_json().encode(),
            "headers": record_headers(event.index, event.type.value),
        }

    def _retry_deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._config.events_retry_s

    async def _send_batched(self, message: dict[str, Any], delivery: Delivery) -> Ack:
        """Hand the event to the batching producer; while its buffer cannot take it (the broker
        stalls), wait and try again, which also slows the run down instead of failing it."""
        assert self._batched is not None
        deadline = self._retry_deadline()
        backoff = _BACKOFF_FIRST_S
        while True:
            try:
                ack: Ack = await self._batched.send(self._config.events_topic, **message)
            except Exception as exc:
                now = asyncio.get_running_loop().time()
                if not is_transient(exc) or now + backoff > deadline or self._closed:
                    if not delivery.done():
                        delivery.set_exception(exc)
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
            else:
                return ack

    def _refuse_gap(self, event: Event) -> None:
        """After a lost event, nothing later of that execution is written (it would leave a
        gap no reader gets past): the run hears of the loss and ends, and its re-run, which
        continues from what is really there (at or below the hole), starts clean."""
        lost = self._failed.get(event.execution_id)
        if lost is None:
            return
        if event.index > lost.index:
            self._raise_failures([event.execution_id])
        del self._failed[event.execution_id]

    def _watch(self, execution_id: str, index: int, delivery: Delivery) -> None:
        self._open.setdefault(execution_id, {})[delivery] = index

        def settled(done: Delivery) -> None:
            open_ = self._open.get(execution_id, {})
            open_.pop(done, None)
            if not open_:
                self._open.pop(execution_id, None)
            error = (
                asyncio.CancelledError("event send was cancelled")
                if done.cancelled()
                else done.exception()
            )
            if error is not None:
                self._lost(execution_id, index, error)

        delivery.add_done_callback(settled)

    def _lost(self, execution_id: str, index: int, error: BaseException) -> None:
        """Blame the execution (only it), and stop re-sending its later events."""
        known = self._failed.get(execution_id)
        if known is None or index < known.index:
            self._failed[execution_id] = _Lost(index, known.error if known else error)
        lowest = self._failed[execution_id].index
        for delivery, later in list(self._open.get(execution_id, {}).items()):
            if later > lowest and not delivery.done():
                delivery.set_exception(
                    EventPublishError(f"event {lowest} of {execution_id} was lost before it")
                )

    def _follow(
        self, ack: Ack, message: dict[str, Any], delivery: Delivery, deadline: float
    ) -> None:
        """Settle `delivery` with the ack, or send the event again after a passing failure."""

        def acked(done: Ack) -> None:
            if delivery.done():
                return
            if done.cancelled():
                delivery.cancel()
                return
            error = done.exception()
            if error is None:
                delivery.set_result(None)
            elif is_transient(error) and not self._closed:
                retry = asyncio.create_task(self._resend(message, delivery, deadline, error))
                self._retries.add(retry)
                retry.add_done_callback(self._retries.discard)
            else:
                delivery.set_exception(error)

        ack.add_done_callback(acked)

    async def _resend(
        self, message: dict[str, Any], delivery: Delivery, deadline: float, error: BaseException
    ) -> None:
        """Send one event again with backoff until acknowledged, a lasting error, or deadline."""
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_FIRST_S
        log.warning(
            "event not acknowledged; sending it again",
            execution_id=message["key"].decode(),
            error=repr(error),
        )
        try:
            while loop.time() + backoff <= deadline:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                if delivery.done():
                    return  # an earlier event of the execution was lost: stop here
                assert self._batched is not None
                try:
                    ack = await self._batched.send(self._config.events_topic, **message)
                    await asyncio.shield(ack)
                except Exception as exc:
                    error = exc
                    if not is_transient(exc):
                        break
                else:
                    if not delivery.done():
                        delivery.set_result(None)
                    return
            if not delivery.done():
                delivery.set_exception(error)
        except asyncio.CancelledError:
            if not delivery.done():
                delivery.set_exception(EventBusClosed("the event bus closed during a re-send"))
            raise

    async def _settle(self, deliveries: Iterable[Delivery]) -> None:
        pending = list(deliveries)
        if pending:
            await asyncio.wait(pending)

    def _raise_failures(self, execution_ids: list[str]) -> None:
        failures = [(i, self._failed.pop(i)) for i in execution_ids if i in self._failed]
        if failures:
            execution_id, first = failures[0]
            raise EventPublishError(
                f"{len(failures)} execution(s) had events the broker did not acknowledge, "
                f"{execution_id} first (event {first.index}): {first.error!r}"
            ) from first.error

    def _record_late_start(self, execution_id: str, ack: Ack) -> None:
        """An `execution.created` the broker acknowledges after its caller gave up is still
        where the stream starts: record it then, so a retry that finds the row (a child's
        deterministic id) finds a readable stream too."""

        def landed(done: Ack) -> None:
            if done.cancelled() or done.exception() is not None or self._closed:
                return
            task = asyncio.create_task(self._record_log_start(execution_id, done.result()))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

        ack.add_done_callback(landed)

    async def _record_log_start(self, execution_id: str, metadata: Any) -> None:
        """Remember where index 0 landed; a retried create must not move it (first one wins)."""
        async with driver(self._sessions) as connection:  # one statement, atomic by itself
            await connection.execute(
                _RECORD_LOG_START_SQL,
                execution_id,
                metadata.topic,
                metadata.partition,
                metadata.offset,
            )
