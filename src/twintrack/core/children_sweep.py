"""The child sweeper: repairs children a crash left behind, run by the recovery sweeper's leader.

A spawn is create-then-start, and a stop of a tree is stop-then-descend; a process killed in
between leaves what nothing else would ever finish:

- a child still `created` whose parent has ended (or is gone): its parent will never start it.
  Under a stopped parent it ends `stopped`; otherwise `failed`, saying why;
- an unfinished child of a `stopped` parent that was never told to stop: it is stopped now.

Only parents that ended more than `grace_s` ago are looked at, so a spawn or a stop still on
its way is never raced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from twintrack.adapters.postgres.tables import ExecutionRow
from twintrack.core.service import ExecutionService
from twintrack.core.stops import stop_command_exists
from twintrack.domain.execution import TERMINAL_STATUSES, ExecutionStatus, Track
from twintrack.observability.metrics import RECOVERIES

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
        sessions: async_sessionmaker[AsyncSession],
        service: ExecutionService,
        grace_s: float,
        batch: int = 200,
    ) -> None:
        self._sessions = sessions
        self._service = service
        self.grace_s = grace_s
        self.batch = batch

    async def sweep(self) -> ChildSweepReport:
        report = ChildSweepReport()
        for child_id, track, parent_id, parent_status in await self._orphans():
            try:
                await self._repair(child_id, parent_id, parent_status, report)
            except Exception:
                # One child that cannot be repaired now must not hold up the others.
                log.exception("child sweep could not repair a child", execution_id=child_id)
                continue
            RECOVERIES.labels(track.value, "orphan_child").inc()
        if report.stopped or report.failed:
            log.warning(
                "child sweep repaired children",
                stopped=report.stopped,
                failed=report.failed,
            )
        return report

    async def _repair(
        self,
        child_id: str,
        parent_id: str,
        parent_status: ExecutionStatus | None,
        report: ChildSweepReport,
    ) -> None:
        await self._service.announce_if_missing(child_id)
        if parent_status is _S.STOPPED:
            await self._service.stop_tree(
                await self._service.executions.get(child_id), f"parent {parent_id} was stopped"
            )
            report.stopped.append(child_id)
            return
        ended = "is gone" if parent_status is None else f"ended {parent_status}"
        reason = (
            f"never started: parent {parent_id} {ended} before starting it "
            "(its run stopped between creating and starting the child)"
        )
        if await self._service.fail_unclaimed(child_id, reason, from_statuses=[_S.CREATED]):
            report.failed.append(child_id)

    async def _orphans(self) -> list[tuple[str, Track, str, ExecutionStatus | None]]:
        """(child id, its track, parent id, parent status or None when gone) of each child to
        repair."""
        parent = aliased(ExecutionRow)
        grace = text("make_interval(secs => :grace)").bindparams(grace=self.grace_s)
        settled = parent.finished_at < func.now() - grace
        child = ExecutionRow
        never_started = (child.status == _S.CREATED) & (
            parent.id.is_(None) | (parent.status.in_(TERMINAL_STATUSES) & settled)
        )
        not_told = (
            child.status.notin_(TERMINAL_STATUSES)
            & (parent.status == _S.STOPPED)
            & settled
            & ~stop_command_exists()
        )
        query = (
            select(child.id, child.track, child.parent_id, parent.status)
            .outerjoin(parent, parent.id == child.parent_id)
            .where(child.parent_id.is_not(None), never_started | not_told)
            .order_by(child.created_at)
            .limit(self.batch)
        )
        async with self._sessions() as session:
            rows = await session.execute(query)
            return [(r[0], r[1], str(r[2]), r[3]) for r in rows]
