"""The child sweeper: repairs children a crash left behind; a sweep of the recovery leader's loop.

A spawn is create-then-start, and a stop of a tree is stop-then-descend; a process killed in
between leaves what nothing else would ever finish:

- a child still `created` whose parent has ended (or is gone): its parent will never start it.
  Under a stopped parent it ends `stopped`; otherwise `failed`, saying why;
- an unfinished child of a `stopped` parent that was never told to stop: it is stopped now.

Only parents that ended more than `grace_s` ago are looked at, so a spawn or a stop still on
its way is never raced. Each repair gets an audit row (reason `orphan_child`) saying what was
done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from twintrack.core.audit import AuditTrail
from twintrack.core.recovery_ports import Orphan, Reason, Recovery, RecoveryStore
from twintrack.core.service import ExecutionService
from twintrack.domain.execution import ExecutionStatus

log = structlog.get_logger()
_S = ExecutionStatus


@dataclass
class ChildSweepReport:
    stopped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class ChildSweeper:
    def __init__(
        self,
        *,
        service: ExecutionService,
        store: RecoveryStore,
        audit: AuditTrail,
        grace_s: float,
        batch: int = 200,
    ) -> None:
        self._service = service
        self._store = store
        self._audit = audit
        self.grace_s = grace_s
        self.batch = batch

    async def sweep(self) -> ChildSweepReport:
        report = ChildSweepReport()
        for orphan in await self._store.orphan_children(self.grace_s, self.batch):
            try:
                await self._audit.record(await self._repair(orphan, report))
            except Exception:
                # One child that cannot be repaired now must not hold up the others.
                log.exception("child sweep could not repair a child", execution_id=orphan.child_id)
        if report.stopped or report.failed:
            log.warning(
                "child sweep repaired children",
                stopped=report.stopped,
                failed=report.failed,
            )
        return report

    async def _repair(self, orphan: Orphan, report: ChildSweepReport) -> Recovery:
        """Repair one child; the audit entry saying what was done."""
        child_id, parent_id, parent_status = orphan.child_id, orphan.parent_id, orphan.parent_status
        child = await self._service.announce_if_missing(child_id)
        if parent_status is _S.STOPPED:
            why = f"parent {parent_id} was stopped"
            await self._service.stop_tree(await self._service.executions.get(child_id), why)
            report.stopped.append(child_id)
        else:
            ended = "is gone" if parent_status is None else f"ended {parent_status}"
            why = (
                f"never started: parent {parent_id} {ended} before starting it "
                "(its run stopped between creating and starting the child)"
            )
            if await self._service.fail_unclaimed(child_id, why, from_statuses=[_S.CREATED]):
                report.failed.append(child_id)
        return Recovery(child_id, orphan.track, Reason.ORPHAN_CHILD, child.attempt, None, why)
