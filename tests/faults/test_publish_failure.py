"""Events the broker does not acknowledge: re-sent while it may still come back, and when lost
for good, blamed on their own execution only, never on another's flush (no shared list)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.e2e.stack import eventually
from tests.faults.broker import own_broker
from tests.integration.kafka.test_kafka_events import collect, event, new_execution
from twintrack.adapters.kafka.clients import KafkaConfig, ensure_topics
from twintrack.adapters.kafka.events import EventPublishError, KafkaEventBus
from twintrack.adapters.postgres import PostgresFlowStore
from twintrack.tooling.embedded.broker import EmbeddedBroker

__all__ = ["own_broker"]

Sessions = async_sessionmaker[AsyncSession]
DEFINITION = {"name": "f", "nodes": [{"id": "a", "type": "const", "config": {"value": 1}}]}
# aiokafka gives up on a produce request after this; the bus then decides what follows.
REQUEST_TIMEOUT_MS = 1000


async def _bus(broker: EmbeddedBroker, sessions: Sessions, retry_s: float) -> KafkaEventBus:
    config = KafkaConfig(
        bootstrap_servers=broker.bootstrap_servers,
        topic_prefix="faults",
        partitions=1,  # both executions share a partition, hence the producer's batches
        enable_idempotence=False,
        events_retry_s=retry_s,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
    )
    await ensure_topics(config)
    bus = KafkaEventBus(config, sessions)
    await bus.start()
    return bus


@pytest_asyncio.fixture
async def executions(session_factory: Sessions) -> AsyncIterator[tuple[str, str]]:
    flow_id = (await PostgresFlowStore(session_factory).create("alice", "f", DEFINITION)).id
    yield (
        await new_execution(session_factory, flow_id),
        await new_execution(session_factory, flow_id),
    )


@pytest.mark.timeout(60)
async def test_unacknowledged_events_are_sent_again_once_the_broker_answers(
    own_broker: EmbeddedBroker, session_factory: Sessions, executions: tuple[str, str]
) -> None:
    a, _ = executions
    bus = await _bus(own_broker, session_factory, retry_s=60)
    try:
        await bus.publish(event(a, 0), wait=True)
        with structlog.testing.capture_logs() as logs:
            own_broker.pause()
            for index in range(1, 6):
                await bus.publish(event(a, index, last=5))

            async def resending() -> bool:
                return any("sending it again" in entry["event"] for entry in logs)

            await eventually(resending, timeout=REQUEST_TIMEOUT_MS / 1000 + 10)
            own_broker.resume()
            await bus.flush(a)  # no error: the stall cost time, not the events
        events = await collect(bus.subscribe(a))
        assert [e.index for e in events] == [0, 1, 2, 3, 4, 5]
        assert events[-1].type.is_terminal
    finally:
        await bus.close()


@pytest.mark.timeout(60)
async def test_lost_events_are_blamed_on_their_execution_only(
    own_broker: EmbeddedBroker, session_factory: Sessions, executions: tuple[str, str]
) -> None:
    a, b = executions
    bus = await _bus(own_broker, session_factory, retry_s=0.5)
    try:
        await bus.publish(event(a, 0), wait=True)
        await bus.publish(event(b, 0), wait=True)
        own_broker.pause()
        await bus.publish(event(a, 1))
        await bus.publish(event(a, 2))
        with pytest.raises(EventPublishError, match=f"{a} first \\(event 1\\)"):
            await bus.flush(a)
        own_broker.resume()
        # B's events, on the same partition and producer, are B's business alone.
        await bus.publish(event(b, 1))
        await bus.publish(event(b, 2, last=2))
        await bus.flush(b)
        await bus.flush()  # A's loss was reported once, to A's run: nobody else hears of it
        events = await collect(bus.subscribe(b))
        assert [e.index for e in events] == [0, 1, 2]
    finally:
        await bus.close()
