"""The Kafka worker: takes tasks, claims executions, runs them, keeps the leases alive.

One consumer group for all workers. A task's offset is committed as soon as its claim is
committed in Postgres: from then on the claim, not Kafka, guarantees the execution is not
lost (recovery re-delivers an expired claim). So a slow execution holds one of the
`WORKER_CONCURRENCY` slots and nothing else; when every slot is busy the worker pauses its
partitions but keeps polling, so it stays in the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from twintrack.domain.commands import Command
from twintrack.domain.execution import ExecutionStatus
from twintrack.engine import ExecutionControl, ExecutionResult
from twintrack.metrics import (
    CLAIMS,
    DEAD_LETTERS,
    EXECUTION_SECONDS,
    EXECUTIONS_FINISHED,
    EXECUTIONS_RUNNING,
    LEASES_LOST,
)
from twintrack.nodes.base import Counters
from twintrack.ports import CommandChannel, CommandMessage, EventBus
from twintrack.runner import LeaseLost, run_execution
from twintrack.service import ExecutionService
from twintrack.store.errors import NotFound
from twintrack.store.executions import ExecutionRecord
from twintrack.store.workers import WorkerRegistry
from twintrack.tracks.kafka.claims import Claim, ClaimStore
from twintrack.tracks.kafka.clients import KafkaConfig, make_consumer, make_producer
from twintrack.tracks.kafka.tasks import TaskMessage

log = structlog.get_logger()
_S = ExecutionStatus
_TRACK = "kafka"
# A worker stops writing this long before its lease runs out in Postgres, so a slow clock or
# a late heartbeat can never let it write after recovery handed the execution to another.
_LEASE_SAFETY_S = 1.0


@dataclass
class ClaimLease:
    """The worker's own view of a lease: it fences itself when the deadline passes."""

    claim: Claim
    ttl_s: float
    deadline: float = field(default=0.0)
    lost: bool = False

    def __post_init__(self) -> None:
        self.renewed(time.monotonic())

    def renewed(self, at: float) -> None:
        self.deadline = at + self.ttl_s - min(_LEASE_SAFETY_S, self.ttl_s / 3)

    def check(self) -> None:
        if self.lost or time.monotonic() > self.deadline:
            self.lost = True
            raise LeaseLost(f"lease on {self.claim.execution_id} is lost")


class _ClaimStatus:
    """Fenced status writes for one claimed execution."""

    def __init__(self, claims: ClaimStore, claim: Claim) -> None:
        self._claims = claims
        self._claim = claim

    async def _move(self, target: ExecutionStatus, **kw: Any) -> None:
        if await self._claims.transition(self._claim, target, **kw) is None:
            raise LeaseLost(f"lease on {self._claim.execution_id} is lost")

    async def paused(self) -> None:
        await self._move(_S.PAUSED, expected={_S.RUNNING})

    async def resumed(self) -> None:
        await self._move(_S.RUNNING, expected={_S.PAUSED})

    async def finished(self, result: ExecutionResult, next_event_index: int) -> None:
        error = result.error
        await self._move(
            result.status,
            release=True,
            outputs=result.outputs,
            error_message=error.message if error else None,
            error_node_id=error.node_id if error else None,
            next_event_index=next_event_index,
        )


class KafkaWorker:
    def __init__(
        self,
        *,
        config: KafkaConfig,
        service: ExecutionService,
        claims: ClaimStore,
        bus: EventBus,
        commands: CommandChannel,
        counters: Counters,
        registry: WorkerRegistry,
        worker_id: str,
        concurrency: int = 5,
        claim_ttl_s: float = 15,
    ) -> None:
        self.config = config
        self.service = service
        self.claims = claims
        self.bus = bus
        self.commands = commands
        self.counters = counters
        self.registry = registry
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.claim_ttl_s = claim_ttl_s
        self._consumer: AIOKafkaConsumer | None = None
        self._dead_letters: AIOKafkaProducer | None = None
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._leases: dict[str, ClaimLease] = {}
        self._background: list[asyncio.Task[None]] = []
        self._slot_freed = asyncio.Event()
        self._stopping = False

    @property
    def running(self) -> list[str]:
        return list(self._runs)

    async def start(self) -> None:
        await self.registry.register(self.worker_id, ["kafka"])
        self._dead_letters = make_producer(self.config, linger_ms=0)
        await self._dead_letters.start()
        self._consumer = make_consumer(
            self.config,
            self.config.tasks_topic,
            group_id=self.config.worker_group,
            client_id=self.worker_id,
        )
        await self._consumer.start()
        self._background = [
            asyncio.create_task(self._consume(), name="kafka-worker-consume"),
            asyncio.create_task(self._heartbeat(), name="kafka-worker-heartbeat"),
        ]
        log.info("kafka worker started", worker_id=self.worker_id, concurrency=self.concurrency)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking tasks; let running executions finish within `grace_s`, then hand the
        rest back at once (their leases end now, so recovery re-delivers them immediately)."""
        self._stopping = True
        for task in self._background[:1]:
            task.cancel()
        if self._runs:
            await asyncio.wait(list(self._runs.values()), timeout=grace_s)
        for execution_id, run in list(self._runs.items()):
            run.cancel()
            await self.claims.expire_now(execution_id)
        if self._runs:
            await asyncio.gather(*self._runs.values(), return_exceptions=True)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
        if self._dead_letters is not None:
            await self._dead_letters.stop()
        await self.registry.stopped(self.worker_id)
        log.info("kafka worker stopped", worker_id=self.worker_id)

    # -- taking tasks ----------------------------------------------------------------------

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping:
            free = self.concurrency - len(self._runs)
            assigned = consumer.assignment()
            if free <= 0:
                consumer.pause(*assigned)
            elif consumer.paused():
                consumer.resume(*consumer.paused())
            try:
                batch = await consumer.getmany(timeout_ms=100, max_records=max(free, 1))
            except Exception:
                log.exception("task fetch failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if not batch and free <= 0:
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), timeout=1.0)
                continue
            for tp, records in batch.items():
                for record in records:
                    await self._take(record)
                await self._commit(consumer, tp, records[-1].offset + 1)

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
        try:
            taken = await self.claims.claim(task.execution_id, self.worker_id, self.claim_ttl_s)
        except NotFound:
            await self._dead_letter(message, f"unknown execution '{task.execution_id}'")
            return
        if taken is None:
            log.debug("task skipped: not queued or held elsewhere", execution_id=task.execution_id)
            return
        claim, record = taken
        CLAIMS.labels(_TRACK).inc()
        lease = ClaimLease(claim, self.claim_ttl_s)
        self._leases[record.id] = lease
        self._runs[record.id] = asyncio.create_task(
            self._run(claim, lease, record), name=f"run:{record.id}"
        )

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
        DEAD_LETTERS.labels(_TRACK).inc()
        log.warning("task dead-lettered", reason=reason, offset=message.offset)

    # -- running ---------------------------------------------------------------------------

    async def _run(self, claim: Claim, lease: ClaimLease, record: ExecutionRecord) -> None:
        control = ExecutionControl()
        replaying = True

        async def obey(message: CommandMessage) -> None:
            # A re-run starts the flow over: steps a user spent on an earlier attempt are spent.
            if replaying and record.attempt > 1 and message.command is Command.STEP:
                return
            control.send(message.command, message.reason)

        unwatch = await self.commands.replay_and_watch(record.id, obey)
        replaying = False
        EXECUTIONS_RUNNING.labels(_TRACK).inc()
        started = time.monotonic()
        try:
            flow = await self.service.flow_of(record)
            result = await run_execution(
                service=self.service,
                record=record,
                flow=flow,
                bus=self.bus,
                control=control,
                lease=lease,
                status=_ClaimStatus(self.claims, claim),
                counters=self.counters,
                worker_id=self.worker_id,
            )
            EXECUTIONS_FINISHED.labels(_TRACK, result.status.value).inc()
            EXECUTION_SECONDS.labels(_TRACK).observe(time.monotonic() - started)
        except LeaseLost:
            LEASES_LOST.labels(_TRACK).inc()
            log.warning("lease lost; execution abandoned to recovery", execution_id=record.id)
        except asyncio.CancelledError:
            log.warning("execution run cancelled", execution_id=record.id)
        except Exception:
            # Leave the claim to expire: recovery re-runs it, and gives up after MAX_ATTEMPTS.
            log.exception("execution run crashed", execution_id=record.id)
        finally:
            EXECUTIONS_RUNNING.labels(_TRACK).dec()
            unwatch()
            self._runs.pop(record.id, None)
            self._leases.pop(record.id, None)
            self._slot_freed.set()

    async def _heartbeat(self) -> None:
        interval = self.claim_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            leases = dict(self._leases)
            started = time.monotonic()
            try:
                kept = await self.claims.renew(
                    self.worker_id,
                    [(i, lease.claim.generation) for i, lease in leases.items()],
                    self.claim_ttl_s,
                )
                await self.registry.heartbeat(self.worker_id)
            except Exception:
                log.exception("heartbeat failed; leases run on their last deadline")
                kept = None
            for execution_id, lease in leases.items():
                if kept is not None and execution_id in kept:
                    lease.renewed(started)
                    continue
                try:
                    lease.check()
                    if kept is not None:
                        lease.lost = True
                        raise LeaseLost(execution_id)
                except LeaseLost:
                    run = self._runs.get(execution_id)
                    if run is not None:
                        log.warning("lease lost; stopping engine", execution_id=execution_id)
                        run.cancel()
