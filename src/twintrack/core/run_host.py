"""Running claimed executions, for any track: leases, heartbeats, commands, the run itself.

Both workers take executions their own way (a Kafka task; a DBOS workflow step) and then hand
them here. Every run holds a claim in Postgres: a lease renewed every third of its TTL and a
fencing generation, so a worker that lost its lease stops its engine and writes nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from twintrack.core.ports import CommandChannel, CommandMessage
from twintrack.core.records import Claim, ExecutionRecord
from twintrack.core.run import LeaseLost, run_execution
from twintrack.core.service import ExecutionService
from twintrack.core.stores import ClaimStore, WorkerRegistry
from twintrack.core.transient import retry_transient
from twintrack.domain.commands import Command
from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.engine import ExecutionControl, ExecutionResult
from twintrack.nodes.base import Counters
from twintrack.observability.metrics import (
    CLAIMS,
    EXECUTION_SECONDS,
    EXECUTIONS_FINISHED,
    EXECUTIONS_RUNNING,
    LEASES_LOST,
)

log = structlog.get_logger()
_S = ExecutionStatus
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


class RunFailures(Protocol):
    """The attempts ledger (`core.attempts.Attempts`): a run that ended without an outcome is
    recorded, so a give-up after MAX_ATTEMPTS quotes the last real failure."""

    async def run_failed(
        self, *, execution_id: str, track: Track, worker_id: str, attempt: int, detail: str
    ) -> None: ...

    async def give_up_if_exhausted(self, execution_id: str, *, taker: str | None = None) -> bool:
        """End the execution `failed` if its last run ended without an outcome and no attempt
        is left; True when it was given up now."""
        ...


class ClaimedStatusWriter:
    """The run's `StatusWriter`: status moves fenced by its claim, so a worker that lost the
    lease cannot write (a refused move reads as LeaseLost)."""

    def __init__(self, claims: ClaimStore, claim: Claim) -> None:
        self._claims = claims
        self._claim = claim

    async def _move(self, target: ExecutionStatus, **kw: Any) -> None:
        # Fenced by the claim's generation, so a repeat whose first try committed is refused
        # (and reads as a lost lease) rather than applied twice.
        moved = await retry_transient(
            lambda: self._claims.transition(self._claim, target, **kw),
            what=f"{target} of {self._claim.execution_id}",
        )
        if moved is None:
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


class RunHost:
    """Runs claimed executions of one worker and keeps their leases alive."""

    def __init__(
        self,
        *,
        service: ExecutionService,
        claims: ClaimStore,
        commands: CommandChannel,
        counters: Counters,
        registry: WorkerRegistry,
        worker_id: str,
        claim_ttl_s: float,
        failures: RunFailures,
    ) -> None:
        self.service = service
        self.claims = claims
        self.commands = commands
        self.counters = counters
        self.registry = registry
        self.worker_id = worker_id
        self.claim_ttl_s = claim_ttl_s
        self.attempts = failures
        self.runs: dict[str, asyncio.Task[ExecutionResult | None]] = {}
        self.leases: dict[str, ClaimLease] = {}
        self.slot_freed = asyncio.Event()
        #: set when the worker begins shutting down: its workers take nothing new
        self.draining = False
        self._records: dict[str, ExecutionRecord] = {}
        self._handing_over: set[str] = set()
        self._heartbeat: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat(), name=f"heartbeat:{self.worker_id}")

    async def stop(self, grace_s: float) -> None:
        """Let runs finish within `grace_s`, then hand the rest over (see `hand_back`).

        Callers stop their workers taking work first; a run launched meanwhile (a task or a
        workflow taken just before) is waited for too, within the same deadline."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self.runs and (left := deadline - loop.time()) > 0:
            await asyncio.wait(list(self.runs.values()), timeout=left)
        if self.runs:
            log.warning("handing over unfinished runs", executions=sorted(self.runs))
            await asyncio.gather(*(self._hand_over(i) for i in list(self.runs)))
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None

    async def _hand_over(self, execution_id: str) -> None:
        run, lease = self.runs.get(execution_id), self.leases.get(execution_id)
        record = self._records.get(execution_id)
        if run is None or lease is None or record is None:
            return
        self._handing_over.add(execution_id)
        try:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await self.hand_back(lease.claim, record)
        finally:
            self._handing_over.discard(execution_id)

    async def hand_back(self, claim: Claim, record: ExecutionRecord) -> None:
        """Give a claimed execution to another worker without spending an attempt: its events
        so far are flushed (the next run numbers after them), then it is `queued` again with a
        `handover` audit row (ClaimStore.hand_back) and, on the Kafka track, its task re-sent
        (this worker's consumer has stopped). A DBOS-track workflow is re-enqueued by the DBOS
        worker as it stops. If the database cannot be reached the lease is left to run out, and
        recovery re-delivers it as a failed attempt instead."""
        eid = record.id
        try:
            with contextlib.suppress(Exception):
                await self.service.buses[record.events_backend].flush()
            moved = await self.claims.hand_back(claim)
        except Exception:
            log.exception(
                "hand-over failed; recovery takes it when the lease runs out", execution_id=eid
            )
            return
        if moved is None:
            return  # finished meanwhile, or no longer ours
        log.info("execution handed over", execution_id=eid, attempt=moved.attempt)
        if moved.track is Track.KAFKA:
            try:
                await self.service.queues[Track.KAFKA].enqueue(
                    eid, moved.attempt + 1, moved.events_backend
                )
            except Exception:
                # queued with no task: the sweeper re-sends stale queued executions
                log.exception("hand-over task not sent; the sweeper re-sends it", execution_id=eid)

    def launch(self, claim: Claim, record: ExecutionRecord) -> asyncio.Task[ExecutionResult | None]:
        """Run a freshly claimed execution in the background."""
        CLAIMS.labels(record.track.value).inc()
        lease = ClaimLease(claim, self.claim_ttl_s)
        self.leases[record.id] = lease
        self._records[record.id] = record
        task = asyncio.create_task(self._run(claim, lease, record), name=f"run:{record.id}")
        self.runs[record.id] = task
        return task

    async def _run(
        self, claim: Claim, lease: ClaimLease, record: ExecutionRecord
    ) -> ExecutionResult | None:
        track = record.track.value
        control = ExecutionControl()
        replaying = True

        async def obey(message: CommandMessage) -> None:
            # A re-run starts the flow over: steps a user spent on an earlier attempt are spent.
            if replaying and record.attempt > 1 and message.command is Command.STEP:
                return
            control.send(message.command, message.reason)

        unwatch: Callable[[], None] = lambda: None  # noqa: E731
        EXECUTIONS_RUNNING.labels(track).inc()
        started = time.monotonic()
        try:
            unwatch = await self.commands.replay_and_watch(record.id, obey)
            replaying = False
            flow = await retry_transient(
                lambda: self.service.flow_of(record), what=f"flow of {record.id}"
            )
            result = await run_execution(
                service=self.service,
                record=record,
                flow=flow,
                bus=self.service.buses[record.events_backend],
                control=control,
                lease=lease,
                status=ClaimedStatusWriter(self.claims, claim),
                counters=self.counters,
                worker_id=self.worker_id,
            )
            EXECUTIONS_FINISHED.labels(track, result.status.value).inc()
            EXECUTION_SECONDS.labels(track).observe(time.monotonic() - started)
            return result
        except LeaseLost:
            LEASES_LOST.labels(track).inc()
            log.warning("lease lost; execution abandoned to recovery", execution_id=record.id)
            await self._failed(record, "lost its lease (heartbeats did not renew the claim)")
        except asyncio.CancelledError:
            log.warning("execution run cancelled", execution_id=record.id)
            if lease.lost and record.id not in self._handing_over:
                await self._failed(record, "lost its lease (heartbeats did not renew the claim)")
        except Exception as exc:
            # Leave the claim to expire: recovery re-runs it, and gives up after MAX_ATTEMPTS.
            log.exception("execution run crashed", execution_id=record.id)
            await self._failed(record, f"crashed: {type(exc).__name__}: {exc}")
        finally:
            EXECUTIONS_RUNNING.labels(track).dec()
            unwatch()
            if self.leases.get(record.id) is lease:  # else a re-claim's newer run is there
                self.runs.pop(record.id, None)
                self.leases.pop(record.id, None)
                self._records.pop(record.id, None)
            self.slot_freed.set()
        return None

    async def _failed(self, record: ExecutionRecord, what: str) -> None:
        """Record the run's real failure: a give-up after MAX_ATTEMPTS quotes it."""
        await self.attempts.run_failed(
            execution_id=record.id,
            track=record.track,
            worker_id=self.worker_id,
            attempt=record.attempt,
            detail=f"attempt {record.attempt} on worker {self.worker_id} {what}",
        )

    async def _beat(self) -> None:
        interval = self.claim_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            leases = dict(self.leases)
            started = time.monotonic()
            try:
                kept: set[str] | None = await self.claims.renew(
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
                if kept is not None:
                    lease.lost = True
                try:
                    lease.check()
                except LeaseLost:
                    run = self.runs.get(execution_id)
                    if run is not None and self.leases.get(execution_id) is lease:
                        log.warning("lease lost; stopping engine", execution_id=execution_id)
                        run.cancel()
