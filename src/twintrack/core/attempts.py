"""Attempts that end without an outcome: recording why, and giving up after MAX_ATTEMPTS.

The Kafka sweeper (a claim that expired), the DBOS worker (taking over a run whose worker is
gone, or one it lost itself) and a worker's run host (a crash it saw) all come here, so the
rule (domain/attempts.py `exhausted`) and the way an execution is given up live in one place.
Giving up is one transaction under the execution's row lock: the claim is ended, the audit row
written, the terminal event published and the row failed together; if any of it fails nothing
is committed, and the next sweep (or takeover) tries again.
"""

from __future__ import annotations

import structlog

from twintrack.core.audit import AuditTrail
from twintrack.core.recovery_ports import Reason, Recovery, RecoveryStore
from twintrack.core.service import ExecutionService
from twintrack.core.stores import ACTIVE
from twintrack.domain.attempts import exhausted, failed_runs, give_up_reason
from twintrack.domain.execution import Track

log = structlog.get_logger()


def stopped_renewing(attempt: int, worker_id: str) -> str:
    return f"attempt {attempt} on worker {worker_id} stopped renewing its claim (lease expired)"


class Attempts:
    def __init__(
        self,
        service: ExecutionService,
        *,
        store: RecoveryStore,
        audit: AuditTrail,
        max_attempts: int,
    ) -> None:
        self._service = service
        self._store = store
        self._audit = audit
        self.max_attempts = max_attempts

    async def run_failed(
        self, *, execution_id: str, track: Track, worker_id: str, attempt: int, detail: str
    ) -> None:
        """Record why a run ended without an outcome, as its worker saw it. Best effort: the
        failure may be the database itself, and then the claim just runs out."""
        try:
            await self._audit.record(
                Recovery(execution_id, track, Reason.RUN_FAILED, attempt, worker_id, detail)
            )
        except Exception:
            log.warning("could not record a run failure", execution_id=execution_id, exc_info=True)

    async def give_up_if_exhausted(self, execution_id: str, *, taker: str | None = None) -> bool:
        """End the execution `failed` if its last run ended without an outcome and it has no
        attempt left. True when it was given up now.

        The last run is over when its claim is released, expired, or held by `taker` (the
        worker asking, whose own run ended). A live claim of another worker means it still
        runs: nothing happens.
        """
        async with self._audit.locked(execution_id) as audited:
            row = audited.row
            record = row.record
            if record.status not in ACTIVE:
                return False
            claim = await self._store.last_claim(row)
            holder = claim.holder if claim is not None else None
            if claim is not None and not (claim.expired or holder in (None, taker)):
                return False
            handovers = await self._audit.audit.handovers(row)
            if not exhausted(record.attempt, handovers, self.max_attempts):
                return False
            last = await self._audit.audit.last_failure(row)
            if last is None:
                last = (
                    stopped_renewing(record.attempt, holder)
                    if holder is not None
                    else f"attempt {record.attempt} ended without an outcome"
                )
            reason = give_up_reason(failed_runs(record.attempt, handovers), self.max_attempts, last)
            if claim is not None:
                await self._store.release_claim(row)
            await audited.record(
                Recovery(execution_id, record.track, Reason.GAVE_UP, record.attempt, holder, reason)
            )
            await self._service.fail_locked(row, reason)
        log.warning("execution given up", execution_id=execution_id, reason=reason)
        return True
