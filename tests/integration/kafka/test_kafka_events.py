"""KafkaEventBus against a real Kafka-protocol broker and PostgreSQL (DESIGN §1.5, §2).

The contract under test: every event of an execution, in index order, no gap, no duplicate,
from any `from_index`, live or after the fact, ending after the terminal event; replays seek to
the recorded offset of index 0 rather than scanning the partition from offset 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.fixtures.servers import UniqueName
from twintrack.adapters.kafka.clients import KafkaConfig, ensure_topics, make_consumer
from twintrack.adapters.kafka.event_reader import EventBusClosed, EventLogNotFound, record_headers
from twintrack.adapters.kafka.events import KafkaEventBus
from twintrack.adapters.postgres import PostgresExecutionStore, PostgresFlowStore
from twintrack.adapters.postgres.tables import KafkaEventLogRow
from twintrack.domain.events import Event, EventType
from twintrack.domain.execution import EventsBackend, Track
from twintrack.domain.ids import new_execution_id
from twintrack.tooling.embedded.discovery import ProvidedBroker

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]
PARTITIONS = 3
DEADLINE_S = 10.0
DEFINITION: dict[str, Any] = {
    "name": "events",
    "nodes": [{"id": "a", "type": "const", "config": {"value": 1}}],
    "edges": [],
}


@dataclass
class ConsumerSpy:
    """Real consumers, instrumented: where they were told to start, what they read, if stopped."""

    seeks: list[int] = field(default_factory=list)
    offsets_read: list[int] = field(default_factory=list)
    started: int = 0
    stopped: int = 0
    running: asyncio.Event = field(default_factory=asyncio.Event)

    def factory(self, config: KafkaConfig) -> AIOKafkaConsumer:
        consumer = make_consumer(config)
        seek, getmany, start, stop = (
            consumer.seek,
            consumer.getmany,
            consumer.start,
            consumer.stop,
        )

        def spy_seek(tp: Any, offset: int) -> None:
            self.seeks.append(offset)
            seek(tp, offset)

        async def spy_getmany(*args: Any, **kwargs: Any) -> Any:
            batches = await getmany(*args, **kwargs)
            self.offsets_read.extend(r.offset for records in batches.values() for r in records)
            return batches

        async def spy_start() -> None:
            self.started += 1
            await start()
            self.running.set()

        async def spy_stop() -> None:
            self.stopped += 1
            await stop()

        consumer.seek, consumer.getmany = spy_seek, spy_getmany
        consumer.start, consumer.stop = spy_start, spy_stop
        return consumer


@pytest_asyncio.fixture
async def config(kafka_broker: ProvidedBroker, unique_name: UniqueName) -> KafkaConfig:
    config = KafkaConfig(
        bootstrap_servers=kafka_broker.bootstrap_servers,
        topic_prefix=unique_name("events"),
        partitions=PARTITIONS,
        enable_idempotence=kafka_broker.capabilities.idempotence,
        fetch_max_wait_ms=10,
    )
    await ensure_topics(config)
    return config


@pytest.fixture
def spy() -> ConsumerSpy:
    return ConsumerSpy()


@pytest_asyncio.fixture
async def bus(
    config: KafkaConfig, session_factory: Sessions, spy: ConsumerSpy
) -> AsyncIterator[KafkaEventBus]:
    bus = KafkaEventBus(config, session_factory, consumer_factory=spy.factory)
    await bus.start()
    yield bus
    await bus.close()


@pytest_asyncio.fixture
async def raw_producer(config: KafkaConfig) -> AsyncIterator[AIOKafkaProducer]:
    """Writes what a buggy or foreign writer might put on the events topic."""
    producer = AIOKafkaProducer(bootstrap_servers=config.bootstrap_servers, linger_ms=0)
    await producer.start()
    yield producer
    await producer.stop()


@pytest_asyncio.fixture
async def flow_id(session_factory: Sessions) -> str:
    return (await PostgresFlowStore(session_factory).create("alice", "f", DEFINITION)).id


def partition_of(execution_id: str) -> int:
    """The partition the producer's default partitioner picks for this key."""
    partitions = list(range(PARTITIONS))
    return int(DefaultPartitioner()(execution_id.encode(), partitions, partitions))


async def new_execution(sessions: Sessions, flow_id: str, partition: int | None = None) -> str:
    """An `executions` row (kafka_event_logs references it), optionally on a given partition."""
    execution_id = new_execution_id()
    while partition is not None and partition_of(execution_id) != partition:
        execution_id = new_execution_id()
    await PostgresExecutionStore(sessions).create(
        owner_id="alice",
        flow_id=flow_id,
        flow_version=1,
        track=Track.KAFKA,
        events_backend=EventsBackend.KAFKA,
        execution_id=execution_id,
    )
    return execution_id


def event(execution_id: str, index: int, last: int | None = None, **data: Any) -> Event:
    """index 0 is execution.created, `last` is execution.completed, the rest node logs."""
    if index == 0:
        kind = EventType.EXECUTION_CREATED
    elif index == last:
        kind = EventType.EXECUTION_COMPLETED
    else:
        kind = EventType.NODE_LOG
    return Event(execution_id=execution_id, index=index, type=kind, data=data)


async def publish_all(
    bus: KafkaEventBus, execution_id: str, indices: list[int], last: int | None
) -> None:
    for index in indices:
        await bus.publish(event(execution_id, index, last))
    await bus.flush()


async def collect(stream: AsyncGenerator[Event, None]) -> list[Event]:
    """The whole stream: returns only because the reader ended (after the terminal event)."""

    async def drain() -> list[Event]:
        return [e async for e in stream]

    return await asyncio.wait_for(drain(), DEADLINE_S)


def indices(events: list[Event]) -> list[int]:
    return [e.index for e in events]


async def log_row(sessions: Sessions, execution_id: str) -> KafkaEventLogRow:
    async with sessions() as session:
        row = await session.get(KafkaEventLogRow, execution_id)
    assert row is not None
    return row


async def test_replay_from_zero_in_order_and_ends_after_terminal(
    bus: KafkaEventBus, session_factory: Sessions, flow_id: str, spy: ConsumerSpy
) -> None:
    execution_id = await new_execution(session_factory, flow_id)
    await publish_all(bus, execution_id, list(range(6)), last=5)

    events = await collect(bus.subscribe(execution_id))

    assert indices(events) == [0, 1, 2, 3, 4, 5]
    assert events[0].type is EventType.EXECUTION_CREATED
    assert events[-1].type is EventType.EXECUTION_COMPLETED
    assert {e.execution_id for e in events} == {execution_id}
    assert spy.started == spy.stopped == 1


@pytest.mark.parametrize(
    ("from_index", "expected"),
    [(1, [1, 2, 3, 4, 5]), (3, [3, 4, 5]), (5, [5]), (6, []), (40, [])],
)
async def test_subscribe_from_index_gets_exactly_the_rest(
    bus: KafkaEventBus,
    session_factory: Sessions,
    flow_id: str,
    from_index: int,
    expected: list[int],
) -> None:
    """No off-by-one; a resume past the terminal event ends at once instead of hanging."""
    execution_id = await new_execution(session_factory, flow_id)
    await publish_all(bus, execution_id, list(range(6)), last=5)

    assert indices(await collect(bus.subscribe(execution_id, from_index))) == expected


async def test_subscriber_before_the_events_follows_them_live(
    bus: KafkaEventBus, session_factory: Sessions, flow_id: str
) -> None:
    execution_id = await new_execution(session_factory, flow_id)
    received: asyncio.Queue[Event] = asyncio.Queue()

    async def follow() -> None:
        async for e in bus.subscribe(execution_id):
            received.put_nowait(e)

    # Subscribed before even index 0 exists: the reader waits for the log row.
    reader = asyncio.create_task(follow())
    await bus.publish(event(execution_id, 0), wait=True)
    assert (await asyncio.wait_for(received.get(), DEADLINE_S)).index == 0

    for index in range(1, 5):
        await bus.publish(event(execution_id, index, last=4), wait=True)
        assert (await asyncio.wait_for(received.get(), DEADLINE_S)).index == index
    await asyncio.wait_for(reader, DEADLINE_S)  # ended by itself after the terminal event
    assert received.empty()


async def test_duplicates_and_reordering_never_show_a_gap_or_a_duplicate(
    bus: KafkaEventBus, session_factory: Sessions, flow_id: str
) -> None:
    execution_id = await new_execution(session_factory, flow_id)
    await bus.publish(event(execution_id, 0), wait=True)
    live = asyncio.create_task(collect(bus.subscribe(execution_id)))
    # At-least-once writers: 3 twice (the first copy wins), 5 before 4, 2 again after the gap.
    for index, copy in [(1, 1), (2, 1), (3, 1), (3, 2), (5, 1), (2, 2), (4, 1), (6, 1)]:
        await bus.publish(event(execution_id, index, last=6, copy=copy))
    await bus.flush()

    for events in (await live, await collect(bus.subscribe(execution_id, 2))):
        assert indices(events) == list(range(events[0].index, 7))
        assert all(e.data.get("copy", 1) == 1 for e in events)


async def test_interleaved_executions_on_one_partition_do_not_leak(
    bus: KafkaEventBus, session_factory: Sessions, flow_id: str
) -> None:
    first = await new_execution(session_factory, flow_id, partition=1)
    second = await new_execution(session_factory, flow_id, partition=1)
    for execution_id in (first, second):
        await bus.publish(event(execution_id, 0), wait=True)
    streams = [asyncio.create_task(collect(bus.subscribe(x))) for x in (first, second)]
    for index in range(1, 6):
        for execution_id in (first, second):
            await bus.publish(event(execution_id, index, last=5, owner=execution_id))
    await bus.flush()

    for execution_id, stream in zip((first, second), streams, strict=True):
        events = await stream
        assert indices(events) == list(range(6))
        assert {e.execution_id for e in events} == {execution_id}
        assert all(e.data["owner"] == execution_id for e in events[1:])
    assert (await log_row(session_factory, first)).partition == 1


async def test_replay_seeks_to_the_recorded_offset_not_to_zero(
    bus: KafkaEventBus,
    config: KafkaConfig,
    session_factory: Sessions,
    flow_id: str,
    spy: ConsumerSpy,
) -> None:
    # 50 events of other executions on the same partition come first.
    partition = 2
    for _ in range(10):
        other = new_execution_id()
        while partition_of(other) != partition:
            other = new_execution_id()
        await publish_all(bus, other, list(range(1, 6)), last=None)
    execution_id = await new_execution(session_factory, flow_id, partition=partition)
    await publish_all(bus, execution_id, list(range(4)), last=3)

    row = await log_row(session_factory, execution_id)
    assert (row.topic, row.partition) == (config.events_topic, partition)
    assert row.first_offset >= 50

    assert indices(await collect(bus.subscribe(execution_id, 1))) == [1, 2, 3]
    assert spy.seeks == [row.first_offset]
    assert spy.offsets_read
    assert min(spy.offsets_read) >= row.first_offset


async def test_a_retried_created_event_does_not_move_the_log_start(
    bus: KafkaEventBus, session_factory: Sessions, flow_id: str
) -> None:
    execution_id = await new_execution(session_factory, flow_id)
    await bus.publish(event(execution_id, 0), wait=True)
    first = (await log_row(session_factory, execution_id)).first_offset
    await bus.publish(event(execution_id, 0, retry=True), wait=True)

    assert (await log_row(session_factory, execution_id)).first_offset == first
    await publish_all(bus, execution_id, [1], last=1)
    events = await collect(bus.subscribe(execution_id))
    assert indices(events) == [0, 1]
    assert "retry" not in events[0].data


async def test_next_index_reads_to_the_highwater(
    bus: KafkaEventBus, session_factory: Sessions, flow_id: str, spy: ConsumerSpy
) -> None:
    execution_id = await new_execution(session_factory, flow_id)
    assert await bus.next_index(execution_id) == 0

    # Batched with linger: multi-record batches, where ListOffsets(latest) is wrong on Tansu.
    await publish_all(bus, execution_id, list(range(8)), last=None)
    assert await bus.next_index(execution_id) == 8

    await publish_all(bus, execution_id, [5], last=None)  # a duplicate from a retried writer
    other = await new_execution(session_factory, flow_id, partition=partition_of(execution_id))
    await publish_all(bus, other, list(range(12)), last=None)  # more records after ours
    assert await bus.next_index(execution_id) == 8
    assert await bus.next_index(other) == 12
    assert spy.started == spy.stopped


async def test_malformed_records_are_skipped_with_a_warning(
    bus: KafkaEventBus,
    config: KafkaConfig,
    session_factory: Sessions,
    flow_id: str,
    raw_producer: AIOKafkaProducer,
) -> None:
    execution_id = await new_execution(session_factory, flow_id)
    await bus.publish(event(execution_id, 0), wait=True)
    key, topic = execution_id.encode(), config.events_topic
    foreign = event("ex_someone_else", 1).model_dump_json().encode()
    for value, headers in [
        (b"not json", record_headers(1, "node.log")),
        (b'{"index": 1, "shape": "wrong"}', []),
        (foreign, record_headers(1, "node.log")),
        (b"{}", record_headers(99, "node.log")),  # must not count for next_index either
    ]:
        await raw_producer.send_and_wait(topic, value, key=key, headers=headers)
    await publish_all(bus, execution_id, [1, 2, 3], last=3)

    with structlog.testing.capture_logs() as logs:
        events = await collect(bus.subscribe(execution_id))
        assert await bus.next_index(execution_id) == 4

    assert indices(events) == [0, 1, 2, 3]
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 8  # each of the 4 bad records, once by the reader, once by the scan
    assert {w["execution_id"] for w in warnings} == {execution_id}


async def test_closing_a_subscription_early_stops_its_consumer(
    bus: KafkaEventBus, session_factory: Sessions, flow_id: str, spy: ConsumerSpy
) -> None:
    execution_id = await new_execution(session_factory, flow_id)
    await publish_all(bus, execution_id, [0, 1], last=None)  # no terminal event: stays live

    stream = bus.subscribe(execution_id)
    assert (await asyncio.wait_for(anext(stream), DEADLINE_S)).index == 0
    await asyncio.wait_for(stream.aclose(), 2.0)
    assert spy.started == spy.stopped == 1

    # Cancelling the task that iterates stops it too.
    spy.running.clear()
    waiting = asyncio.create_task(collect(bus.subscribe(execution_id, 2)))
    await asyncio.wait_for(spy.running.wait(), DEADLINE_S)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert spy.stopped == 2


async def test_closing_the_bus_ends_open_subscriptions(
    config: KafkaConfig, session_factory: Sessions, flow_id: str, spy: ConsumerSpy
) -> None:
    bus = KafkaEventBus(config, session_factory, consumer_factory=spy.factory)
    await bus.start()
    execution_id = await new_execution(session_factory, flow_id)
    await bus.publish(event(execution_id, 0), wait=True)
    waiting = asyncio.create_task(collect(bus.subscribe(execution_id, 1)))
    await asyncio.wait_for(spy.running.wait(), DEADLINE_S)

    await bus.close()
    await bus.close()  # idempotent
    with pytest.raises(EventBusClosed):
        await waiting
    assert spy.stopped >= 1  # by close(), then (harmlessly) again by the reader's finally
    with pytest.raises(EventBusClosed):
        await bus.publish(event(execution_id, 1))


async def test_a_stream_that_was_never_created_fails_clearly(
    config: KafkaConfig, session_factory: Sessions, flow_id: str
) -> None:
    bus = KafkaEventBus(config, session_factory, log_wait_s=0.2)
    execution_id = await new_execution(session_factory, flow_id)
    with pytest.raises(EventLogNotFound, match=execution_id):
        await collect(bus.subscribe(execution_id))
    await bus.close()
