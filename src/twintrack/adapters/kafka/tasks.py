"""KafkaTaskQueue: a started execution becomes a task message, keyed by its id."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel, ConfigDict, Field

from twintrack.adapters.kafka.clients import BrokerUnavailable, KafkaConfig, make_producer
from twintrack.domain.execution import EventsBackend, Track
from twintrack.observability.tracing import task_sent

#: the W3C trace context header a task carries, so the worker continues the start's trace
TRACEPARENT = "traceparent"


def traceparent_of(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    """The task's W3C `traceparent` header, if it carries one."""
    for key, value in headers or ():
        if key == TRACEPARENT and value:
            return value.decode("latin-1")
    return None


class TaskMessage(BaseModel):
    """The task payload. Deliberately tiny: the execution row is the source of truth."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    execution_id: str = Field(min_length=1, max_length=200)
    attempt: int = Field(default=1, ge=1)


class KafkaTaskQueue:
    track = Track.KAFKA

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is None:
            # Tasks are sent one at a time and awaited: no linger, latency matters here.
            self._producer = make_producer(self.config, linger_ms=0)
            await self._producer.start()

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def prepare(self, execution_id: str, events_backend: EventsBackend) -> None:
        """Nothing to make ahead: the task is sent on start."""

    async def cancel(self, execution_id: str) -> None:
        """A task already sent is skipped by the worker (the execution is no longer queued)."""

    async def enqueue(
        self,
        execution_id: str,
        attempt: int,
        events_backend: EventsBackend = EventsBackend.KAFKA,
    ) -> None:
        if self._producer is None:
            raise RuntimeError("KafkaTaskQueue.start() was not called")
        message = TaskMessage(execution_id=execution_id, attempt=attempt)
        # Bounded, so a request never hangs on a stalled broker (503 instead). A task that
        # still goes out later is harmless (workers claim first); one that never does is
        # re-sent by the recovery sweeper, as any lost task.
        try:
            with task_sent(
                execution_id=execution_id,
                attempt=attempt,
                track=self.track.value,
                events_backend=events_backend.value,
                system="kafka",
            ) as traceparent:
                headers = [] if traceparent is None else [(TRACEPARENT, traceparent.encode())]
                async with asyncio.timeout(self.config.call_timeout_s):
                    await self._producer.send_and_wait(
                        self.config.tasks_topic,
                        key=execution_id.encode(),
                        value=message.model_dump_json().encode(),
                        headers=headers,
                    )
        except TimeoutError:
            raise BrokerUnavailable(
                f"the broker did not acknowledge the task of {execution_id} within "
                f"{self.config.call_timeout_s:g}s"
            ) from None
