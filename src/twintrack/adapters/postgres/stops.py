"""Whether an execution is being stopped, in SQL: `ExecutionStore.stop_reason` for a spawn, and
`stop_command_exists()` for queries that must skip (or pick) executions being stopped.

A running execution told to stop stays `running` until its engine obeys, so its status alone
cannot say it; its durable `stop` command can.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres.tables import ExecutionCommandRow, ExecutionRow
from twintrack.domain.commands import Command
from twintrack.domain.execution import ExecutionStatus


def stop_command_exists() -> ColumnElement[bool]:
    """SQL: the execution (`ExecutionRow`) has a stored `stop` command."""
    return (
        select(ExecutionCommandRow.id)
        .where(
            ExecutionCommandRow.execution_id == ExecutionRow.id,
            ExecutionCommandRow.command == Command.STOP.value,
        )
        .exists()
    )


async def stop_reason(sessions: async_sessionmaker[AsyncSession], execution_id: str) -> str | None:
    """Its first stop's reason ("stopped" without one), or its ending once stopped; None while
    nobody asked it to stop."""
    first_stop = (
        select(func.coalesce(ExecutionCommandRow.reason, "stopped"))
        .where(
            ExecutionCommandRow.execution_id == execution_id,
            ExecutionCommandRow.command == Command.STOP.value,
        )
        .order_by(ExecutionCommandRow.id)
        .limit(1)
        .scalar_subquery()
    )
    async with sessions() as session:
        row = (
            await session.execute(
                select(ExecutionRow.status, ExecutionRow.error_message, first_stop).where(
                    ExecutionRow.id == execution_id
                )
            )
        ).one_or_none()
    if row is None:
        return None
    status, error_message, reason = row
    if reason is not None:
        return str(reason)
    if status is ExecutionStatus.STOPPED:
        return str(error_message or "stopped")
    return None
