"""What the fault tests ask a deployment: who holds an execution, who is alive, the audit."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from sqlalchemy import select

from tests.e2e.conftest import Mode
from tests.e2e.stack import Stack, eventually, stack_env
from twintrack.adapters.postgres.tables import ExecutionClaimRow, ExecutionRecoveryRow, WorkerRow
from twintrack.tooling.embedded.discovery import ProvidedBroker


async def claim_holder(stack: Stack, execution_id: str) -> str | None:
    """The claim row's worker id ('' once released), None with no claim row."""
    async with stack.container.sessions() as session:
        held: str | None = await session.scalar(
            select(ExecutionClaimRow.worker_id).where(
                ExecutionClaimRow.execution_id == execution_id
            )
        )
    return held


async def worker_id_of(stack: Stack, proc: subprocess.Popen[bytes], timeout: float = 40) -> str:
    """The worker id a spawned `twintrack worker` registered, once it has."""

    async def probe() -> str | None:
        async with stack.container.sessions() as session:
            found: str | None = await session.scalar(
                select(WorkerRow.worker_id).where(
                    WorkerRow.pid == proc.pid, WorkerRow.stopped_at.is_(None)
                )
            )
        return found

    found: str = await eventually(probe, timeout=timeout)
    return found


async def audits(stack: Stack, execution_id: str) -> list[ExecutionRecoveryRow]:
    async with stack.container.sessions() as session:
        return list(
            await session.scalars(
                select(ExecutionRecoveryRow)
                .where(ExecutionRecoveryRow.execution_id == execution_id)
                .order_by(ExecutionRecoveryRow.id)
            )
        )


def env_for(
    mode: Mode, database_url: str, broker: ProvidedBroker, unique_name: Callable[[str], str]
) -> dict[str, str]:
    """A deployment's environment in `mode` on the session's servers, on fresh topics."""
    base = stack_env(
        database_url, broker.bootstrap_servers, unique_name("tt"), broker.capabilities.idempotence
    )
    return {**base, **mode.env}
