"""Kafka topics and client settings in one place, so every producer and consumer agrees."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, KafkaTimeoutError

from twintrack.config import Settings


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str
    topic_prefix: str = "twintrack"
    partitions: int = 6
    enable_idempotence: bool = True
    linger_ms: int = 5
    batch_size: int = 65536
    fetch_max_wait_ms: int = 10
    session_timeout_ms: int = 6_000
    max_event_bytes: int = 1_000_000
    call_timeout_s: float = 3.0
    events_retry_s: float = 120.0
    #: aiokafka's own bound on one produce request (and on a batch waiting to be sent).
    request_timeout_ms: int = 15_000

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaConfig:
        if not settings.kafka_bootstrap_servers:
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS is not set")
        return cls(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topic_prefix=settings.kafka_topic_prefix,
            partitions=settings.kafka_partitions,
            enable_idempotence=settings.kafka_enable_idempotence,
            linger_ms=settings.kafka_events_linger_ms,
            batch_size=settings.kafka_events_batch_size,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            max_event_bytes=settings.max_event_bytes,
            call_timeout_s=settings.broker_call_timeout_s,
            events_retry_s=settings.kafka_events_retry_s,
        )

    @property
    def tasks_topic(self) -> str:
        return f"{self.topic_prefix}.tasks"

    @property
    def events_topic(self) -> str:
        return f"{self.topic_prefix}.events"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}.tasks.dlq"

    @property
    def worker_group(self) -> str:
        return f"{self.topic_prefix}.workers"

    def topics(self) -> list[str]:
        return [self.tasks_topic, self.events_topic, self.dead_letter_topic]


#: Record framing, key and headers on top of an event's JSON, well within this margin.
_RECORD_OVERHEAD_BYTES = 16 * 1024


class BrokerUnavailable(TimeoutError):
    """The broker did not answer a call within its bound (a stall, a partition): retry later.

    A TimeoutError, so the API answers 503 like any other dependency outage.
    """


def is_transient(error: BaseException) -> bool:
    """A send failure that another try may cure (timeouts, lost connections, leader moves)."""
    if isinstance(error, BrokerUnavailable | KafkaTimeoutError):
        return True
    return isinstance(error, KafkaError) and bool(error.retriable)


def make_producer(config: KafkaConfig, **overrides: Any) -> AIOKafkaProducer:
    """acks=all always; idempotence as configured (the embedded broker cannot do it).

    Requests may be as large as the largest event (MAX_EVENT_BYTES, checked before any send),
    so the producer never is the one to discover an event is too large.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "acks": "all",
        "enable_idempotence": config.enable_idempotence,
        "linger_ms": config.linger_ms,
        "max_batch_size": config.batch_size,
        "max_request_size": max(1024 * 1024, config.max_event_bytes + _RECORD_OVERHEAD_BYTES),
        "request_timeout_ms": config.request_timeout_ms,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(config: KafkaConfig, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """Manual commits, low fetch wait (latency), session timeout from the settings."""
    options: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": config.fetch_max_wait_ms,
        "session_timeout_ms": config.session_timeout_ms,
        "heartbeat_interval_ms": max(config.session_timeout_ms // 3, 100),
        "max_partition_fetch_bytes": max(
            4 * 1024 * 1024, config.max_event_bytes + _RECORD_OVERHEAD_BYTES
        ),
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def ensure_topics(config: KafkaConfig) -> None:
    """Create the track's topics with the configured partitions; existing ones are left alone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=config.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in config.topics() if t not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(t, num_partitions=config.partitions, replication_factor=1)
                    for t in missing
                ]
            )
        # Metadata can lag a creation by a moment; wait until every topic is visible.
        for _ in range(100):
            if set(config.topics()) <= set(await admin.list_topics()):
                return
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
