"""Reading one execution's events back from the shared, partitioned events topic.

All events of an execution share a key, hence a partition. `kafka_event_logs` records the offset
of its `execution.created` (index 0), so a reader seeks straight there with a group-less consumer
instead of re-reading the partition from offset 0 (the prior art's defect). A partition
interleaves many executions and writers are at-least-once, so a reader filters by key and
re-sequences by index: no duplicate, no gap, nothing before `from_index`.

Events gone from Kafka (the topic's retention deleted them, or the broker lost its log): a
reader first checks that the record at the recorded offset is still this execution's index 0.
If it is not, the stream can only be served when everything from `from_index` on is still
there, which is the case when the first retained event of the execution has an index at or
below `from_index`; otherwise `EventsExpired` is raised before any event, naming the earliest
index still retained (or none). A subscriber therefore gets either every event from its index,
with no gap, or that one clear error: never a hang, never a silent skip.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import ConsumerStoppedError
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.kafka.clients import KafkaConfig, make_consumer
from twintrack.adapters.postgres.db import driver
from twintrack.core.in_order import InOrderReader
from twintrack.core.ports import EventsExpired
from twintrack.domain.events import TERMINAL_EVENT_TYPES, Event

# Wire format: ASCII headers, so readers skip stale records without parsing JSON (and kcat
# shows them as they are).
INDEX_HEADER = "index"
TYPE_HEADER = "type"
_TERMINAL_TYPES = frozenset(t.value.encode() for t in TERMINAL_EVENT_TYPES)

# getmany only waits for the background fetcher, which wakes it as soon as records arrive, so
# this bounds the idle loop, not the latency (that is the consumer's fetch_max_wait_ms).
POLL_TIMEOUT_MS = 100
LOG_POLL_S = 0.02
_FIND_START_SQL = (
    "SELECT topic, partition, first_offset FROM kafka_event_logs WHERE execution_id = $1"
)
SCAN_TIMEOUT_S = 60.0
#: last_event reads the partition's tail first, this many offsets, then 4x further back each time
TAIL_WINDOW = 512

ConsumerFactory = Callable[[KafkaConfig], AIOKafkaConsumer]


class EventLogNotFound(LookupError):
    """The execution's `execution.created` was never recorded in Kafka (no stream to read)."""


class EventBusClosed(RuntimeError):
    """The bus was closed while a subscription was open, or before it started."""


@dataclass(frozen=True)
class LogStart:
    """Where an execution's events begin: its partition and the offset of index 0."""

    topic: str
    partition: int
    first_offset: int

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


def record_headers(index: int, event_type: str) -> list[tuple[str, bytes]]:
    return [(INDEX_HEADER, str(index).encode()), (TYPE_HEADER, event_type.encode())]


def _header(record: ConsumerRecord[Any, Any], name: str) -> bytes | None:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value)
    return None


def _index_hint(record: ConsumerRecord[Any, Any]) -> int | None:
    raw = _header(record, INDEX_HEADER)
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


def decode(record: ConsumerRecord[Any, Any], execution_id: str) -> Event | None:
    """The record's event, or None (logged): one bad record must not kill a reader."""
    problem: str | None = None
    event: Event | None = None
    if record.value is None:
        problem = "no value"
    else:
        try:
            event = Event.model_validate_json(record.value)
        except ValidationError as exc:
            problem = f"not an event: {exc.errors(include_url=False)[:3]}"
        else:
            if event.execution_id != execution_id:
                problem = f"keyed {execution_id} but belongs to {event.execution_id}"
    if problem is None:
        return event
    # Looked up per call (rare): a logger cached at import would miss later logging set-ups.
    structlog.get_logger().warning(
        "skipping malformed event record",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        execution_id=execution_id,
        problem=problem,
    )
    return None


class EventReader:
    """Subscriptions and index scans, each on its own short-lived, group-less consumer."""

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
        self._consumer_factory = consumer_factory
        self._log_wait_s = log_wait_s
        self._open: set[AIOKafkaConsumer] = set()
        self._closed = False

    async def find_start(self, execution_id: str) -> LogStart | None:
        """Where the execution's events start (KafkaEventLogRow); None before its create wrote
        it. Every subscribe and re-run reads it: one statement on the driver."""
        async with driver(self._sessions) as connection:
            row = await connection.fetchrow(_FIND_START_SQL, execution_id)
        return (
            None if row is None else LogStart(row["topic"], row["partition"], row["first_offset"])
        )

    async def wait_for_start(self, execution_id: str) -> LogStart:
        """The log start, waiting briefly: a subscriber may race the create that records it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._log_wait_s
        while (start := await self.find_start(execution_id)) is None:
            if loop.time() >= deadline:
                raise EventLogNotFound(
                    f"no Kafka event log for execution {execution_id} after "
                    f"{self._log_wait_s:g}s: its execution.created was never written"
                )
            await asyncio.sleep(LOG_POLL_S)
        return start

    @asynccontextmanager
    async def _consumer_at(self, start: LogStart) -> AsyncIterator[AIOKafkaConsumer]:
        if self._closed:
            raise EventBusClosed("the event bus is closed")
        consumer = self._consumer_factory(self._config)
        self._open.add(consumer)
        try:
            await consumer.start()
            consumer.assign([start.tp])
            consumer.seek(start.tp, start.first_offset)
            yield consumer
        finally:
            self._open.discard(consumer)
            await consumer.stop()

    async def _records(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition
    ) -> list[ConsumerRecord[Any, Any]]:
        try:
            batches = await consumer.getmany(tp, timeout_ms=POLL_TIMEOUT_MS)
        except ConsumerStoppedError:
            raise EventBusClosed("the event bus was closed during the read") from None
        records: list[ConsumerRecord[Any, Any]] = batches.get(tp, [])
        return records

    async def events(self, execution_id: str, from_index: int = 0) -> AsyncGenerator[Event, None]:
        """Every event with index >= from_index, in order, live, ending after the terminal one."""
        if from_index < 0:
            raise ValueError("from_index must be >= 0")
        start = await self.wait_for_start(execution_id)
        key = execution_id.encode()
        in_order = InOrderReader(from_index)
        check = _RetainedCheck(start, key, execution_id, from_index)
        async with self._consumer_at(start) as consumer:
            while True:
                records = await self._records(consumer, start.tp)
                if not check.done:
                    at = None if records else await consumer.position(start.tp)
                    check.see(records, consumer.highwater(start.tp), at)
                for record in records:
                    if record.key != key:
                        continue
                    hint = _index_hint(record)
                    terminal = _header(record, TYPE_HEADER) in _TERMINAL_TYPES
                    if hint is not None and in_order.stale(hint) and not terminal:
                        continue  # a duplicate or before from_index: no need to parse it
                    event = decode(record, execution_id)
                    if event is None:
                        continue
                    for ready in in_order.push(event):
                        yield ready
                    if in_order.ended:
                        return

    async def next_index(self, execution_id: str) -> int:
        """One past the highest index in the log (0 when there is none)."""
        last = await self.last_event(execution_id)
        return 0 if last is None else last.index + 1

    async def last_event(self, execution_id: str) -> Event | None:
        """The event with the highest index in the log (None when none is retained).

        Read from the partition's tail backwards, never before index 0's recorded offset: the
        tail window (the last TAIL_WINDOW offsets, read up to the highwater), then windows four
        times larger further back, until one holds an event of this execution. An execution's
        events are in the log in index order (one writer at a time, in order), so the highest
        index is in the latest window that has any: the cost is the partition's traffic since the
        execution's last event (seconds, for a give-up or a re-run after a crash), not since its
        creation. The highwater comes from fetch responses (`consumer.highwater`), exact on every
        broker, unlike ListOffsets(latest) on Tansu, which only places the first window.
        """
        start = await self.find_start(execution_id)
        if start is None:
            return None
        key = execution_id.encode()
        try:
            async with asyncio.timeout(SCAN_TIMEOUT_S), self._consumer_at(start) as consumer:
                end = (await consumer.end_offsets([start.tp])).get(start.tp, start.first_offset)
                low = max(start.first_offset, end - TAIL_WINDOW)
                high: int | None = None  # None: up to the highwater
                window = TAIL_WINDOW
                while True:
                    consumer.seek(start.tp, low)
                    highest = await self._highest(consumer, start.tp, key, execution_id, high)
                    if highest is not None or low <= start.first_offset:
                        return highest
                    window *= 4
                    high, low = low, max(start.first_offset, low - window)
        except TimeoutError:
            raise TimeoutError(
                f"reading the events of {execution_id} did not reach the end of "
                f"{start.topic}[{start.partition}] within {SCAN_TIMEOUT_S:g}s"
            ) from None

    async def _highest(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        key: bytes,
        execution_id: str,
        high: int | None,
    ) -> Event | None:
        """The highest-index event of `key` from the consumer's position to `high` (offset,
        exclusive) or, with None, to the highwater. A fresh consumer's every fetch is answered
        after this call began, so reaching its highwater means every event durable at the call
        has been read."""
        highest: Event | None = None
        while True:
            for record in await self._records(consumer, tp):
                if high is not None and record.offset >= high:
                    continue
                event = decode(record, execution_id) if record.key == key else None
                if event is not None and (highest is None or event.index > highest.index):
                    highest = event
            limit = high if high is not None else consumer.highwater(tp)
            if limit is not None and await consumer.position(tp) >= limit:
                return highest

    async def close(self) -> None:
        """Stop every open consumer; their subscriptions end with EventBusClosed."""
        self._closed = True
        for consumer in list(self._open):
            await consumer.stop()


class _RetainedCheck:
    """Whether what a subscriber asked for is still in the log (see the module docstring)."""

    def __init__(self, start: LogStart, key: bytes, execution_id: str, from_index: int) -> None:
        self._start = start
        self._key = key
        self._execution_id = execution_id
        self._from_index = from_index
        self._start_lost = False
        self.done = False

    def _expired(self, earliest: int | None, why: str) -> EventsExpired:
        return EventsExpired(self._execution_id, self._from_index, earliest, why)

    def see(
        self,
        records: list[ConsumerRecord[Any, Any]],
        highwater: int | None,
        position: int | None,
    ) -> None:
        """One fetch's records (or, when it brought none, the consumer's position)."""
        first = self._start.first_offset
        if not records:
            if highwater is None or position is None or position < highwater:
                return  # not at the end of the log yet
            if self._start_lost:
                raise self._expired(None, f"offset {first} of index 0 is gone")
            if highwater <= first:
                raise self._expired(
                    None, f"the log ends at offset {highwater}, before offset {first} of index 0"
                )
            return
        if not self._start_lost:
            head = records[0]
            if head.offset == first and head.key == self._key and _index_hint(head) == 0:
                self.done = True  # the log still starts where it did: nothing is missing
                return
            self._start_lost = True
        ours = [r for r in records if r.key == self._key and _index_hint(r) is not None]
        if not ours:
            return  # read on; an empty fetch at the highwater ends the search
        earliest = min(hint for r in ours if (hint := _index_hint(r)) is not None)
        if earliest > self._from_index:
            raise self._expired(earliest, f"offset {first} of index 0 is gone")
        self.done = True
