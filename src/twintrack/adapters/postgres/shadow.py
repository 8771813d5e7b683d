"""Shadow runs (`shadow_runs`) and the mismatch ledger (`shadow_mismatches`) in Postgres.

The ledger is capped in the transaction that adds to it: every entry older than the newest
`ledger_size` is deleted, so it never grows past SHADOW_LEDGER_SIZE however many mismatch (one
writer: the shadow sweep's leader).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres.tables import ExecutionRow, ShadowMismatchRow, ShadowRunRow
from twintrack.core.records import ExecutionRecord
from twintrack.core.shadow import RUNNING, Mismatch, ShadowOutcomes, ShadowRun
from twintrack.domain.execution import ExecutionStatus, Track


def _run(row: ShadowRunRow) -> ShadowRun:
    return ShadowRun(
        original_id=row.original_id,
        shadow_id=row.shadow_id,
        owner_id=row.owner_id,
        flow_id=row.flow_id,
        flow_version=row.flow_version,
        original_track=row.original_track,
        shadow_track=row.shadow_track,
        status=row.status,
        replayed=dict(row.replayed),
        scheduled_at=row.scheduled_at,
        compared_at=row.compared_at,
    )


def _mismatch(row: ShadowMismatchRow) -> Mismatch:
    return Mismatch(
        original_id=row.original_id,
        shadow_id=row.shadow_id,
        flow_id=row.flow_id,
        flow_version=row.flow_version,
        original_track=row.original_track,
        shadow_track=row.shadow_track,
        diff=row.diff,
        original_events=list(row.original_events),
        shadow_events=list(row.shadow_events),
        replayed=dict(row.replayed),
        id=row.id,
        recorded_at=row.recorded_at,
    )


class PostgresShadowStore:
    """`core.shadow.ShadowStore`."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def candidates(
        self, *, lookback_s: float, after: tuple[datetime, str] | None, limit: int
    ) -> list[ExecutionRecord]:
        e = ExecutionRow
        query = (
            select(e)
            .where(
                e.status == ExecutionStatus.COMPLETED,
                e.parent_id.is_(None),
                e.shadow_of.is_(None),
                e.finished_at >= func.now() - func.make_interval(0, 0, 0, 0, 0, 0, lookback_s),
                ~select(ShadowRunRow.original_id).where(ShadowRunRow.original_id == e.id).exists(),
            )
            .order_by(e.finished_at, e.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(tuple_(e.finished_at, e.id) > tuple_(*after))
        async with self._sessions() as session:
            rows = (await session.scalars(query)).all()
        return [ExecutionRecord.model_validate(r) for r in rows]

    async def reserve(self, run: ShadowRun) -> bool:
        async with self._sessions.begin() as session:
            inserted = await session.scalar(
                pg_insert(ShadowRunRow)
                .values(
                    original_id=run.original_id,
                    shadow_id=run.shadow_id,
                    owner_id=run.owner_id,
                    flow_id=run.flow_id,
                    flow_version=run.flow_version,
                    original_track=run.original_track,
                    shadow_track=run.shadow_track,
                    status=RUNNING,
                )
                .on_conflict_do_nothing(index_elements=["original_id"])
                .returning(ShadowRunRow.original_id)
            )
        return inserted is not None

    async def running(self) -> list[ShadowRun]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(ShadowRunRow)
                .where(ShadowRunRow.status == RUNNING)
                .order_by(ShadowRunRow.scheduled_at)
            )
            return [_run(r) for r in rows]

    async def get(self, original_id: str) -> ShadowRun | None:
        async with self._sessions() as session:
            row = await session.get(ShadowRunRow, original_id)
            return None if row is None else _run(row)

    async def queued(self, track: Track) -> int:
        async with self._sessions() as session:
            count = await session.scalar(
                select(func.count()).where(
                    ExecutionRow.track == track,
                    ExecutionRow.status == ExecutionStatus.QUEUED,
                    ExecutionRow.shadow_of.is_(None),
                )
            )
        return int(count or 0)

    async def finish(
        self,
        original_id: str,
        status: str,
        replayed: dict[str, str],
        mismatch: Mismatch | None,
        *,
        ledger_size: int,
    ) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(ShadowRunRow)
                .where(ShadowRunRow.original_id == original_id, ShadowRunRow.status == RUNNING)
                .values(status=status, replayed=replayed, compared_at=func.now())
            )
            if mismatch is None:
                return
            await session.execute(
                insert(ShadowMismatchRow).values(
                    original_id=mismatch.original_id,
                    shadow_id=mismatch.shadow_id,
                    flow_id=mismatch.flow_id,
                    flow_version=mismatch.flow_version,
                    original_track=mismatch.original_track,
                    shadow_track=mismatch.shadow_track,
                    diff=mismatch.diff,
                    original_events=mismatch.original_events,
                    shadow_events=mismatch.shadow_events,
                    replayed=mismatch.replayed,
                )
            )
            newest = (
                select(ShadowMismatchRow.id)
                .order_by(ShadowMismatchRow.id.desc())
                .limit(ledger_size)
            )
            await session.execute(
                delete(ShadowMismatchRow).where(ShadowMismatchRow.id.not_in(newest))
            )

    async def mismatches(self, limit: int = 20) -> list[Mismatch]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(ShadowMismatchRow).order_by(ShadowMismatchRow.id.desc()).limit(limit)
            )
            return [_mismatch(r) for r in rows]

    async def outcomes(self, window_s: float) -> ShadowOutcomes:
        since = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, window_s)
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(ShadowRunRow.status, func.count())
                    .where(ShadowRunRow.compared_at >= since)
                    .group_by(ShadowRunRow.status)
                )
            ).all()
        counts = {str(status): int(n) for status, n in rows}
        return ShadowOutcomes(compared=sum(counts.values()), mismatched=counts.get("mismatched", 0))
