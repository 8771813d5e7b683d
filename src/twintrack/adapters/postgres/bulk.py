"""`core.bulk.BulkStore` on PostgreSQL: filter queries over `executions`, and the operations
(`bulk_operations`, `bulk_operation_items`).

Taking an execution for an operation is an INSERT ... ON CONFLICT DO NOTHING on the item's
primary key (operation, execution), so of any number of concurrent retries exactly one takes
it: that is what makes an operation act at most once per execution.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres.recovery import holds_back
from twintrack.adapters.postgres.tables import BulkOperationItemRow, BulkOperationRow, ExecutionRow
from twintrack.core.bulk import (
    BulkAction,
    Candidate,
    ExecutionFilter,
    ItemResult,
    OperationRecord,
    Outcome,
)


def _where(where: ExecutionFilter) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if where.track is not None:
        clauses.append(ExecutionRow.track == where.track)
    if where.statuses:
        clauses.append(ExecutionRow.status.in_(list(where.statuses)))
    if where.flow_id is not None:
        clauses.append(ExecutionRow.flow_id == where.flow_id)
    if where.owner_id is not None:
        clauses.append(ExecutionRow.owner_id == where.owner_id)
    if where.created_before is not None:
        clauses.append(ExecutionRow.created_at < where.created_before)
    if where.created_after is not None:
        clauses.append(ExecutionRow.created_at >= where.created_after)
    if where.excluding is not None:
        clauses.append(~holds_back(where.excluding))
    return clauses


class PostgresBulkStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def matching(
        self, where: ExecutionFilter, *, after: Candidate | None, limit: int
    ) -> list[Candidate]:
        query = (
            select(ExecutionRow.id, ExecutionRow.created_at)
            .where(*_where(where))
            .order_by(ExecutionRow.created_at, ExecutionRow.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(
                tuple_(ExecutionRow.created_at, ExecutionRow.id)
                > tuple_(after.created_at, after.execution_id)
            )
        async with self._sessions() as session:
            return [Candidate(i, at) for i, at in (await session.execute(query)).all()]

    async def begin(
        self,
        operation_id: str,
        action: BulkAction,
        request_hash: str,
        request: dict[str, Any],
        requested_by: str,
    ) -> OperationRecord:
        async with self._sessions.begin() as session:
            inserted = await session.scalar(
                pg_insert(BulkOperationRow)
                .values(
                    id=operation_id,
                    action=action.value,
                    request_hash=request_hash,
                    request=request,
                    requested_by=requested_by,
                )
                .on_conflict_do_nothing(index_elements=["id"])
                .returning(BulkOperationRow.id)
            )
        record = await self.load(operation_id)
        assert record is not None  # inserted, or there already
        return OperationRecord(
            record.id,
            record.action,
            record.request_hash,
            record.request,
            record.results,
            record.finished,
            record.truncated,
            created=inserted is not None,
        )

    async def take(self, operation_id: str, execution_ids: list[str]) -> list[str]:
        if not execution_ids:
            return []
        async with self._sessions.begin() as session:
            start = await session.scalar(
                select(func.count()).where(BulkOperationItemRow.operation_id == operation_id)
            )
            taken = await session.scalars(
                pg_insert(BulkOperationItemRow)
                .values(
                    [
                        {
                            "operation_id": operation_id,
                            "execution_id": execution_id,
                            "outcome": Outcome.PENDING.value,
                            "position": int(start or 0) + n,
                        }
                        for n, execution_id in enumerate(execution_ids)
                    ]
                )
                .on_conflict_do_nothing(index_elements=["operation_id", "execution_id"])
                .returning(BulkOperationItemRow.execution_id)
            )
            got = set(taken.all())
        return [i for i in execution_ids if i in got]

    async def settle(self, operation_id: str, execution_id: str, result: ItemResult) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(BulkOperationItemRow)
                .where(
                    BulkOperationItemRow.operation_id == operation_id,
                    BulkOperationItemRow.execution_id == execution_id,
                )
                .values(outcome=result.outcome.value, detail=result.detail)
            )

    async def finish(self, operation_id: str, *, truncated: bool) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(BulkOperationRow)
                .where(BulkOperationRow.id == operation_id)
                .values(finished_at=func.now(), truncated=truncated)
            )

    async def load(self, operation_id: str) -> OperationRecord | None:
        async with self._sessions() as session:
            row = await session.get(BulkOperationRow, operation_id)
            if row is None:
                return None
            items = await session.execute(
                select(
                    BulkOperationItemRow.execution_id,
                    BulkOperationItemRow.outcome,
                    BulkOperationItemRow.detail,
                )
                .where(BulkOperationItemRow.operation_id == operation_id)
                .order_by(BulkOperationItemRow.position, BulkOperationItemRow.execution_id)
            )
            return OperationRecord(
                id=row.id,
                action=BulkAction(row.action),
                request_hash=row.request_hash,
                request=dict(row.request),
                results={i: ItemResult(Outcome(o), d) for i, o, d in items.all()},
                finished=row.finished_at is not None,
                truncated=row.truncated,
                created=False,
            )
