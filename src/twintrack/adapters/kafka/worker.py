"""The Kafka worker: takes tasks from the consumer group, claims executions, runs them.

A task's offset is committed as soon as its claim is committed in Postgres: from then on the
claim, not Kafka, guarantees the execution is not lost (recovery re-delivers an expired claim).
So a slow execution holds one of the `WORKER_CONCURRENCY` slots and nothing else; when every
slot is busy the worker pauses its partitions but keeps polling, so it stays in the group.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from twintrack.adapters.kafka.clients import KafkaConfig, make_consumer, make_producer
from twintrack.adapters.kafka.tasks import TaskMessage, traceparent_of
from twintrack.core.errors import NotFound
from twintrack.core.run_host import RunHost
from twintrack.core.transient import retry_transient
from twintrack.domain.execution import Track
from twintrack.observability.metrics import DEAD_LETTERS
from twintrack.observability.tracing import task_taken

log = structlog.get_logger()

_STOP_TAKING_S = 10.0  # bounds a claim in flight when the worker is told to stop


class KafkaWorker:
    def __init__(self, *, config: KafkaConfig, host: RunHost, concurrency: int = 5) -> None:
        self.config = config
        self.host = host
        self.concurrency = concurrency
        self._consumer: AIOKafkaConsumer | None = None
        self._dead_letters: AIOKafkaProducer | None = None
        self._consuming: asyncio.Task[None] | None = None
        self._stopping = False
        # executions this worker took from Kafka (the host may also run other tracks' work)
        self._mine: set[str] = set()

    @property
    def worker_id(self) -> str:
        return self.host.worker_id

    async def start(self) -> None:
        self._dead_letters = make_producer(self.config, linger_ms=0)
        await self._dead_letters.start()
        self._consumer = make_consumer(
            self.config,
            self.config.tasks_topic,
            group_id=self.config.worker_group,
            client_id=self.worker_id,
        )
        await self._consumer.start()
        self._consuming = asyncio.create_task(self._consume(), name="kafka-worker-consume")
        log.info("kafka worker started", worker_id=self.worker_id, concurrency=self.concurrency)

    async def stop_taking_work(self) -> None:
        """Take no new task: the consume loop ends after the task it is taking (never in the
        middle of a claim), and the consumer leaves the group, so its partitions go to the
        other workers; tasks fetched but not taken were not committed, so they get them."""
        self._stopping = True
        if self._consuming is not None:
            done, _ = await asyncio.wait([self._consuming], timeout=_STOP_TAKING_S)
            if not done:
                self._consuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consuming
            self._consuming = None
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def stop(self) -> None:
        """Stop taking tasks (running executions are the host's to finish or hand back)."""
        await self.stop_taking_work()
        if self._dead_letters is not None:
            await self._dead_letters.stop()
            self._dead_letters = None
        log.info("kafka worker stopped", worker_id=self.worker_id)

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping:
            self._mine &= set(self.host.runs)
            free = self.concurrency - len(self._mine)
            if free <= 0:
                consumer.pause(*consumer.assignment())
            elif consumer.paused():
                consumer.resume(*consumer.paused())
            try:
                batch = await consumer.getmany(timeout_ms=100, max_records=max(free, 1))
            except Exception:
                log.exception("task fetch failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if not batch and free <= 0:
                self.host.slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.host.slot_freed.wait(), timeout=1.0)
                continue
            for tp, records in batch.items():
                taken: int | None = None
                for record in records:
                    if self._stopping:
                        break  # not committed: another worker gets it
                    await self._take_safely(record)
                    taken = record.offset + 1
                if taken is not None:
                    await self._commit(consumer, tp, taken)

    async def _take_safely(self, message: ConsumerRecord[bytes, bytes]) -> None:
        """`_take`, never raising: the consume loop must outlive any one task (and any
        outage). A task that could not be taken is not lost: its execution stays `queued`,
        and the sweeper re-sends queued executions nobody took."""
        try:
            await self._take(message)
        except Exception:
            log.exception("task not taken; the sweeper re-sends it", offset=message.offset)

    async def _commit(self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        try:
            await consumer.commit({tp: offset})
        except Exception:
            # Not fatal: the task may be delivered again, and the claim makes that harmless.
            log.warning("offset commit failed", partition=tp.partition, offset=offset)

    async def _take(self, message: ConsumerRecord[bytes, bytes]) -> None:
        try:
            task = TaskMessage.model_validate_json(message.value or b"")
        except ValidationError as exc:
            reason = "malformed task message: " + "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
                for e in exc.errors()
            )
            await self._dead_letter(message, reason)
            return
        with task_taken(
            execution_id=task.execution_id,
            track=Track.KAFKA.value,
            traceparent=traceparent_of(message.headers),
        ) as delivery:
            try:
                taken = await retry_transient(
                    lambda: self.host.claims.claim(
                        task.execution_id, self.worker_id, self.host.claim_ttl_s, track=Track.KAFKA
                    ),
                    what=f"claim {task.execution_id}",
                )
            except NotFound:
                await self._dead_letter(message, f"unknown execution '{task.execution_id}'")
                return
            if taken is None:
                log.debug(
                    "task skipped: not queued or held elsewhere", execution_id=task.execution_id
                )
                return
            claim, record = taken
            record = delivery.claimed(record)
        self._mine.add(record.id)
        self.host.launch(claim, record)

    async def _dead_letter(self, message: ConsumerRecord[bytes, bytes], reason: str) -> None:
        assert self._dead_letters is not None
        headers = [
            ("reason", reason.encode()[:4000]),
            ("source_topic", message.topic.encode()),
            ("source_partition", str(message.partition).encode()),
            ("source_offset", str(message.offset).encode()),
            ("worker_id", self.worker_id.encode()),
        ]
        await self._dead_letters.send_and_wait(
            self.config.dead_letter_topic, key=message.key, value=message.value, headers=headers
        )
        DEAD_LETTERS.labels(Track.KAFKA.value).inc()
        log.warning("task dead-lettered", reason=reason, offset=message.offset)
