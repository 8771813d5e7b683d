"""Reading an execution's events back when the partition is busy or the log is gone.

`last_event` (every re-run and give-up asks it) reads the partition's tail, not everything since
the execution was created. A replay whose events are no longer in Kafka (here: the broker lost
its log, as the memory-only embedded broker does on restart; on Apache Kafka, retention) fails
at once with EventsExpired naming what is left, instead of hanging or skipping events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.fixtures.servers import UniqueName
from tests.integration.kafka.test_kafka_events import (
    DEADLINE_S,
    PARTITIONS,
    ConsumerSpy,
    Sessions,
    collect,
    event,
    indices,
    log_row,
    new_execution,
    partition_of,
    publish_all,
)
from twintrack.adapters.kafka.clients import KafkaConfig, ensure_topics
from twintrack.adapters.kafka.event_reader import TAIL_WINDOW
from twintrack.adapters.kafka.events import KafkaEventBus
from twintrack.adapters.postgres import PostgresFlowStore
from twintrack.core.ports import EventsExpired
from twintrack.domain.ids import new_execution_id
from twintrack.tooling.embedded.broker import EmbeddedBroker
from twintrack.tooling.embedded.discovery import ProvidedBroker

pytestmark = pytest.mark.integration
DEFINITION = {"name": "t", "nodes": [{"id": "a", "type": "const", "config": {"value": 1}}]}


def _config(bootstrap: str, prefix: str, idempotence: bool) -> KafkaConfig:
    return KafkaConfig(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        partitions=PARTITIONS,
        enable_idempotence=idempotence,
        fetch_max_wait_ms=10,
    )


@pytest_asyncio.fixture
async def flow_id(session_factory: Sessions) -> str:
    return (
        await PostgresFlowStore(session_factory).create("alice", "f", {**DEFINITION, "edges": []})
    ).id


async def _others(bus: KafkaEventBus, partition: int, count: int) -> None:
    """`count` events of other executions on `partition` (node logs, never terminal)."""
    per = 50
    for _ in range(count // per):
        other = new_execution_id()
        while partition_of(other) != partition:
            other = new_execution_id()
        for index in range(1, per + 1):
            await bus.publish(event(other, index))
    await bus.flush()


async def test_last_event_reads_the_partition_tail_not_everything_since_creation(
    kafka_broker: ProvidedBroker, unique_name: UniqueName, session_factory: Sessions, flow_id: str
) -> None:
    config = _config(
        kafka_broker.bootstrap_servers, unique_name("tail"), kafka_broker.capabilities.idempotence
    )
    await ensure_topics(config)
    spy = ConsumerSpy()
    bus = KafkaEventBus(config, session_factory, consumer_factory=spy.factory)
    await bus.start()
    try:
        ex = await new_execution(session_factory, flow_id, partition=1)
        await publish_all(bus, ex, [0], last=None)
        await _others(bus, 1, 3000)  # a busy partition during a long run ...
        await publish_all(bus, ex, [1, 2, 3], last=None)
        await _others(bus, 1, 100)  # ... and a little after it died
        first = (await log_row(session_factory, ex)).first_offset

        last = await bus.last_event(ex)
        assert last is not None
        assert last.index == 3
        assert min(spy.offsets_read) > first + 3000 - TAIL_WINDOW  # the tail only

        far = await new_execution(session_factory, flow_id, partition=1)
        await publish_all(bus, far, [0, 1, 2], last=None)
        await _others(bus, 1, 2000)  # its last event is well before the tail window
        last = await bus.last_event(far)
        assert last is not None
        assert last.index == 2
        assert await bus.last_event(await new_execution(session_factory, flow_id)) is None
        assert spy.started == spy.stopped
    finally:
        await bus.close()


@pytest_asyncio.fixture
async def own_broker() -> AsyncIterator[EmbeddedBroker]:
    """A broker of this test's own: it is restarted, losing its (in-memory) log."""
    broker = EmbeddedBroker()
    broker.start()
    yield broker
    broker.stop()


async def test_a_replay_whose_events_are_gone_fails_clearly_instead_of_hanging(
    own_broker: EmbeddedBroker, unique_name: UniqueName, session_factory: Sessions, flow_id: str
) -> None:
    port = own_broker.port
    config = _config(own_broker.bootstrap_servers, unique_name("gone"), idempotence=False)
    await ensure_topics(config)
    bus = KafkaEventBus(config, session_factory)
    await bus.start()
    partition = 0
    await _others(bus, partition, 100)
    ex = await new_execution(session_factory, flow_id, partition=partition)
    await publish_all(bus, ex, [0, 1, 2, 3, 4], last=None)
    await bus.close()

    own_broker.stop()  # the log is lost ...
    restarted = EmbeddedBroker(port=port)
    restarted.start()
    try:
        await ensure_topics(config)
        bus = KafkaEventBus(config, session_factory)
        await bus.start()
        try:
            # ... the new log does not reach the recorded offset: no hang, a clear error
            with pytest.raises(EventsExpired, match="before offset") as gone:
                await collect(bus.subscribe(ex, 0))
            assert gone.value.earliest_index is None
            assert await asyncio.wait_for(bus.last_event(ex), DEADLINE_S) is None

            # other records now fill the old offsets, then the execution's later events land
            await _others(bus, partition, 150)
            await publish_all(bus, ex, [3, 4, 5], last=5)
            with pytest.raises(EventsExpired, match="the earliest retained is 3") as gone:
                await collect(bus.subscribe(ex, 0))
            assert gone.value.earliest_index == 3
            assert indices(await collect(bus.subscribe(ex, 3))) == [3, 4, 5]  # all retained
            assert indices(await collect(bus.subscribe(ex, 4))) == [4, 5]
        finally:
            await bus.close()
    finally:
        restarted.stop()
