"""The recovery sweep of the Kafka track, and the start timeout of both.

Run by the one sweeper loop (core/sweeper.py) of the process leading the cluster. Each sweep:

- re-delivers Kafka-track executions whose claim expired (the worker died or hung): the
  claim is taken back (fencing the old holder out), the execution goes back to `queued`, an
  audit row is written, and a new task is sent; once its failed runs reach MAX_ATTEMPTS it
  ends `failed` instead, naming the last run's real failure (core/attempts.py);
- re-sends the task of an execution that has sat in `queued` with no claim for a long time
  (a task lost between the status change and the send), at most `batch` per sweep;
- ends root executions never started within START_SIGNAL_TIMEOUT_S as `failed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from twintrack.core.attempts import Attempts, stopped_renewing
from twintrack.core.audit import AuditTrail
from twintrack.core.ports import TaskQueue
from twintrack.core.records import ExpiredClaim
from twintrack.core.recovery_ports import Reason, Recovery, RecoveryStore
from twintrack.core.service import ExecutionService
from twintrack.domain.execution import ExecutionStatus, Track

log = structlog.get_logger()
_S = ExecutionStatus


@dataclass(frozen=True)
class SweepPolicy:
    interval_s: float = 2.0
    max_attempts: int = 3
    start_timeout_s: float = 300.0
    #: a queued execution with no claim for this long gets its task sent again
    stale_queued_s: float = 120.0
    batch: int = 200


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)


class RecoverySweeper:
    def __init__(
        self,
        *,
        service: ExecutionService,
        store: RecoveryStore,
        audit: AuditTrail,
        kafka_queue: TaskQueue | None,
        policy: SweepPolicy,
    ) -> None:
        self._service = service
        self._store = store
        self._audit = audit
        self._kafka_queue = kafka_queue
        self.policy = policy
        self.attempts = Attempts(
            service, store=store, audit=audit, max_attempts=policy.max_attempts
        )

    async def sweep(self) -> SweepReport:
        report = SweepReport()
        for expired in await self._store.expired_claims(self.policy.batch):
            await self._recover(expired, report)
        await self._resend_stale_queued(report)
        await self._start_timeouts(report)
        if report.requeued or report.gave_up or report.resent or report.timed_out:
            log.info("recovery sweep", **{k: len(v) for k, v in vars(report).items()})
        return report

    async def _recover(self, expired: ExpiredClaim, report: SweepReport) -> None:
        eid = expired.execution_id
        if await self.attempts.give_up_if_exhausted(eid):
            report.gave_up.append(eid)
            return
        async with self._audit.under(self._store.take_back(expired)) as audited:
            if audited is None:
                return
            await audited.row.transition(_S.QUEUED)
            await audited.record(
                Recovery(
                    eid,
                    Track.KAFKA,
                    Reason.EXPIRED_CLAIM,
                    expired.attempt,
                    expired.worker_id,
                    stopped_renewing(expired.attempt, expired.worker_id),
                )
            )
        if self._kafka_queue is not None:
            await self._kafka_queue.enqueue(eid, expired.attempt + 1)
        report.requeued.append(eid)
        log.warning(
            "execution re-delivered after its claim expired",
            execution_id=eid,
            previous_worker=expired.worker_id,
            attempt=expired.attempt,
        )

    async def _resend_stale_queued(self, report: SweepReport) -> None:
        """At most `batch` per sweep, oldest first; rows another sweeper is touching are
        skipped, not waited for."""
        if self._kafka_queue is None:
            return
        stale = await self._store.touch_untouched(
            track=Track.KAFKA,
            statuses=[_S.QUEUED],
            older_than_s=self.policy.stale_queued_s,
            limit=self.policy.batch,
        )
        await self._audit.record(
            *(Recovery(s.execution_id, Track.KAFKA, Reason.STALE_QUEUED, s.attempt) for s in stale)
        )
        for s in stale:
            await self._kafka_queue.enqueue(s.execution_id, s.attempt + 1)
            report.resent.append(s.execution_id)

    async def _start_timeouts(self, report: SweepReport) -> None:
        roots = await self._store.never_started_roots(
            self.policy.start_timeout_s, self.policy.batch
        )
        for eid in roots:
            if await self._service.fail_unclaimed(eid, "start timeout", from_statuses=[_S.CREATED]):
                report.timed_out.append(eid)
