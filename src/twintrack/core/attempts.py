"""Attempts that end without an outcome: recording why, and giving up after MAX_ATTEMPTS.

The Kafka sweeper (a claim that expired), the DBOS worker (taking over a run whose worker is
gone, or one it lost itself) and a worker's run host (a crash it saw) all come here, so the
rule (domain/attempts.py) and the way an execution is given up live in one place. Giving up is
one transaction under the execution's row lock: the claim is ended, the audit row written, the
terminal event published and the row failed together; if any of it fails nothing is committed,
and the next sweep (or takeover) tries again.
"""

from __future__ import annotations

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from twintrack.adapters.postgres.claims import ACTIVE, RELEASED
from twintrack.adapters.postgres.tables import ExecutionClaimRow, ExecutionRecoveryRow
from twintrack.core.service import ExecutionService
from twintrack.domain.attempts import HANDOVER, exhausted, failed_runs, give_up_reason
from twintrack.domain.execution import Track
from twintrack.observability.metrics import RECOVERIES

log = structlog.get_logger()
RUN_FAILED = "run_failed"  # audit reason: a worker saw its own run crash or lose its lease
GAVE_UP = "max_attempts"


def audit(
    session: AsyncSession,
    *,
    execution_id: str,
    track: Track,
    reason: str,
    worker_id: str | None,
    attempt: int,
    detail: str | None = None,
) -> None:
    """One `execution_recoveries` row, within the caller's transaction."""
    session.add(
        ExecutionRecoveryRow(
            execution_id=execution_id,
            track=track,
            reason=reason,
            previous_worker_id=worker_id or None,
            attempt=attempt,
            detail=detail,
        )
    )


def stopped_renewing(attempt: int, worker_id: str) -> str:
    return f"attempt {attempt} on worker {worker_id} stopped renewing its claim (lease expired)"


class Attempts:
    def __init__(self, service: ExecutionService, max_attempts: int) -> None:
        self._service = service
        self._executions = service.executions
        self._sessions = service.executions.sessions
        self.max_attempts = max_attempts

    async def run_failed(
        self, *, execution_id: str, track: Track, worker_id: str, attempt: int, detail: str
    ) -> None:
        """Record why a run ended without an outcome, as its worker saw it. Best effort: the
        failure may be the database itself, and then the claim just runs out."""
        try:
            async with self._sessions.begin() as session:
                audit(
                    session,
                    execution_id=execution_id,
                    track=track,
                    reason=RUN_FAILED,
                    worker_id=worker_id,
                    attempt=attempt,
                    detail=detail,
                )
        except Exception:
            log.warning("could not record a run failure", execution_id=execution_id, exc_info=True)

    @staticmethod
    async def handovers(session: AsyncSession, execution_id: str) -> int:
        count = await session.scalar(
            select(func.count()).where(
                ExecutionRecoveryRow.execution_id == execution_id,
                ExecutionRecoveryRow.reason == HANDOVER,
            )
        )
        return int(count or 0)

    @staticmethod
    async def _last_failure(session: AsyncSession, execution_id: str, attempt: int) -> str | None:
        detail: str | None = await session.scalar(
            select(ExecutionRecoveryRow.detail)
            .where(
                ExecutionRecoveryRow.execution_id == execution_id,
                ExecutionRecoveryRow.attempt == attempt,
                ExecutionRecoveryRow.reason != HANDOVER,
                ExecutionRecoveryRow.detail.is_not(None),
            )
            .order_by(ExecutionRecoveryRow.id.desc())
            .limit(1)
        )
        return detail

    async def give_up_if_exhausted(self, execution_id: str, *, taker: str | None = None) -> bool:
        """End the execution `failed` if its last run ended without an outcome and it has no
        attempt left. True when it was given up now.

        The last run is over when its claim is released, expired, or held by `taker` (the
        worker asking, whose own run ended). A live claim of another worker means it still
        runs: nothing happens.
        """
        async with self._executions.locked(execution_id) as row:
            session, record = row.session, row.record
            if record.status not in ACTIVE:
                return False
            claim = (
                await session.execute(
                    select(
                        ExecutionClaimRow.worker_id,
                        (ExecutionClaimRow.expires_at < func.now()).label("expired"),
                    )
                    .where(ExecutionClaimRow.execution_id == execution_id)
                    .with_for_update()
                )
            ).one_or_none()
            holder = claim.worker_id if claim is not None else RELEASED
            if claim is not None and not (claim.expired or holder in (RELEASED, taker)):
                return False
            handovers = await self.handovers(session, execution_id)
            if not exhausted(record.attempt, handovers, self.max_attempts):
                return False
            last = await self._last_failure(session, execution_id, record.attempt)
            if last is None:
                last = (
                    stopped_renewing(record.attempt, holder)
                    if holder != RELEASED
                    else f"attempt {record.attempt} ended without an outcome"
                )
            reason = give_up_reason(failed_runs(record.attempt, handovers), self.max_attempts, last)
            if claim is not None:
                await session.execute(
                    update(ExecutionClaimRow)
                    .where(ExecutionClaimRow.execution_id == execution_id)
                    .values(worker_id=RELEASED, expires_at=func.now())
                )
            audit(
                session,
                execution_id=execution_id,
                track=record.track,
                reason=GAVE_UP,
                worker_id=holder,
                attempt=record.attempt,
                detail=reason,
            )
            await self._service.fail_locked(row, reason)
        RECOVERIES.labels(record.track.value, GAVE_UP).inc()
        log.warning("execution given up", execution_id=execution_id, reason=reason)
        return True
