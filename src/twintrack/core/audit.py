"""The one writer of the recovery audit: every `execution_recoveries` row and `recoveries` count.

Whatever recovers an execution (an expired claim taken back, a stale task re-sent, a give-up,
a gone DBOS executor, a repaired workflow or child, a reroute) records it here, so a row and
its count cannot drift apart. A count is taken only once its row is committed: a recovery whose
transaction fails is not counted. A worker's own report of a failed run and a handover at
shutdown are rows only: they recover nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from twintrack.core.recovery_ports import Reason, Recovery, RecoveryAudit
from twintrack.core.stores import LockedExecution
from twintrack.observability.metrics import RECOVERIES

#: reasons that are a row only, never a `recoveries` count
_NOT_COUNTED = frozenset({Reason.RUN_FAILED, Reason.HANDOVER})


class Lockable(Protocol):
    def locked(
        self, execution_id: str, owner_id: str | None = None
    ) -> AbstractAsyncContextManager[LockedExecution]: ...


class AuditedExecution:
    """An execution under its row lock whose audit rows commit with the lock's transaction."""

    def __init__(self, row: LockedExecution, audit: RecoveryAudit) -> None:
        self.row = row
        self._audit = audit
        self.recorded: list[Recovery] = []

    async def record(self, entry: Recovery) -> None:
        await self._audit.write([entry], within=self.row)
        self.recorded.append(entry)


class AuditTrail:
    def __init__(self, audit: RecoveryAudit, executions: Lockable) -> None:
        self.audit = audit
        self._executions = executions

    async def record(self, *entries: Recovery) -> None:
        """Write the rows in one transaction of their own, then count them."""
        if entries:
            await self.audit.write(entries)
            _count(entries)

    @asynccontextmanager
    async def locked(self, execution_id: str) -> AsyncIterator[AuditedExecution]:
        """Lock the execution; rows recorded through the handle commit with the lock's
        transaction and are counted after it commits."""
        async with self.under(self._executions.locked(execution_id)) as audited:
            assert audited is not None
            yield audited

    @asynccontextmanager
    async def under(
        self, lock: AbstractAsyncContextManager[LockedExecution | None]
    ) -> AsyncIterator[AuditedExecution | None]:
        """`locked`, for a lock some other store takes (None: it took nothing)."""
        recorded: list[Recovery] = []
        async with lock as row:
            if row is None:
                yield None
            else:
                audited = AuditedExecution(row, self.audit)
                yield audited
                recorded = audited.recorded
        _count(recorded)


def _count(entries: Sequence[Recovery]) -> None:
    for entry in entries:
        if entry.reason not in _NOT_COUNTED:
            RECOVERIES.labels(entry.track.value, entry.reason.value).inc()
