"""The recovery sweeper: one active per cluster, serving every worker.

Every worker process runs one; the one holding a Postgres advisory lock sweeps, the others
wait to take over. Each sweep:

- re-delivers Kafka-track executions whose claim expired (the worker died or hung): the
  claim is taken back (fencing the old holder out), the execution goes back to `queued`, an
  audit row is written, and a new task is sent; once its failed runs reach MAX_ATTEMPTS it
  ends `failed` instead, naming the last run's real failure (core/attempts.py);
- re-sends the task of an execution that has sat in `queued` with no claim for a long time
  (a task lost between the status change and the send), at most `batch` per sweep;
- ends root executions never started within START_SIGNAL_TIMEOUT_S as `failed`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from twintrack.adapters.postgres.claims import ACTIVE, ClaimStore, touch_unclaimed
from twintrack.adapters.postgres.executions import ExecutionStore
from twintrack.adapters.postgres.leader import AdvisoryLeader
from twintrack.adapters.postgres.tables import ExecutionRow
from twintrack.core.attempts import Attempts, audit, stopped_renewing
from twintrack.core.children_sweep import ChildSweeper
from twintrack.core.ports import TaskQueue
from twintrack.core.records import ExpiredClaim
from twintrack.core.service import ExecutionService
from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.observability.metrics import RECOVERIES

log = structlog.get_logger()
_S = ExecutionStatus
LOCK_KEY = 0x7477696E74726B  # "twintrk"


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


def _seconds_ago(seconds: float) -> object:
    return func.now() - text("make_interval(secs => :secs)").bindparams(secs=seconds)


class RecoverySweeper:
    def __init__(
        self,
        *,
        db_engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        service: ExecutionService,
        claims: ClaimStore,
        kafka_queue: TaskQueue | None,
        policy: SweepPolicy,
        worker_id: str,
        children: ChildSweeper | None = None,
    ) -> None:
        self._sessions = sessions
        self._service = service
        self._executions: ExecutionStore = service.executions
        self._claims = claims
        self._kafka_queue = kafka_queue
        self.policy = policy
        self.worker_id = worker_id
        self._attempts = Attempts(service, policy.max_attempts)
        self._leader = AdvisoryLeader(db_engine, LOCK_KEY, "recovery sweeper")
        self._children = children

    async def is_leader(self) -> bool:
        return await self._leader.lead()

    async def run(self) -> None:
        """Sweep forever while leader; cancel the task to stop."""
        try:
            while True:
                if await self.is_leader():
                    try:
                        await self.sweep()
                    except Exception:
                        log.exception("recovery sweep failed")
                await asyncio.sleep(self.policy.interval_s)
        finally:
            await self._leader.release()

    # -- one sweep -------------------------------------------------------------------------

    async def sweep(self) -> SweepReport:
        report = SweepReport()
        for expired in await self._claims.expired(self.policy.batch):
            await self._recover(expired, report)
        await self._resend_stale_queued(report)
        await self._start_timeouts(report)
        if self._children is not None:
            await self._children.sweep()
        if report.requeued or report.gave_up or report.resent or report.timed_out:
            log.info("recovery sweep", **{k: len(v) for k, v in vars(report).items()})
        return report

    async def _recover(self, expired: ExpiredClaim, report: SweepReport) -> None:
        eid = expired.execution_id
        if await self._attempts.give_up_if_exhausted(eid):
            report.gave_up.append(eid)
            return
        async with self._sessions.begin() as session:
            if not await self._claims.take_back(session, expired):
                return
            await self._executions.transition(eid, _S.QUEUED, expected=ACTIVE, session=session)
            audit(
                session,
                execution_id=eid,
                track=Track.KAFKA,
                reason="expired_claim",
                worker_id=expired.worker_id,
                attempt=expired.attempt,
                detail=stopped_renewing(expired.attempt, expired.worker_id),
            )
        RECOVERIES.labels(Track.KAFKA.value, "expired_claim").inc()
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
        async with self._sessions.begin() as session:
            rows = await touch_unclaimed(
                session,
                track=Track.KAFKA,
                statuses=[_S.QUEUED],
                older_than_s=self.policy.stale_queued_s,
                limit=self.policy.batch,
            )
            for row in rows:
                audit(
                    session,
                    execution_id=row.id,
                    track=Track.KAFKA,
                    reason="stale_queued",
                    worker_id=None,
                    attempt=row.attempt,
                )
        RECOVERIES.labels(Track.KAFKA.value, "stale_queued").inc(len(rows))
        for row in rows:
            await self._kafka_queue.enqueue(row.id, row.attempt + 1)
            report.resent.append(row.id)

    async def _start_timeouts(self, report: SweepReport) -> None:
        async with self._sessions() as session:
            ids = list(
                await session.scalars(
                    select(ExecutionRow.id)
                    .where(
                        ExecutionRow.status == _S.CREATED,
                        ExecutionRow.parent_id.is_(None),
                        ExecutionRow.created_at < _seconds_ago(self.policy.start_timeout_s),
                    )
                    .limit(self.policy.batch)
                )
            )
        for eid in ids:
            if await self._service.fail_unclaimed(eid, "start timeout", from_statuses=[_S.CREATED]):
                report.timed_out.append(eid)
