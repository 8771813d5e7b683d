"""`core.bulk.BulkStore` in memory, over the memory executions (unit tests of core/bulk.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twintrack.adapters.memory.stores import MemoryExecutionStore
from twintrack.core.bulk import (
    BulkAction,
    Candidate,
    ExecutionFilter,
    ItemResult,
    OperationRecord,
    Outcome,
)
from twintrack.core.records import ExecutionRecord
from twintrack.core.recovery_ports import HoldBack


class MemoryBulkStore:
    def __init__(
        self,
        executions: MemoryExecutionStore,
        held: Callable[[ExecutionRecord, HoldBack], bool] | None = None,
    ) -> None:
        self.executions = executions
        #: the reroute hold-back rules (they need the audit): MemoryRerouteStore.held
        self.held = held
        self.operations: dict[str, OperationRecord] = {}
        #: every (operation, execution) taken, in order: a test sees nothing taken twice
        self.taken: list[tuple[str, str]] = []

    async def matching(
        self, where: ExecutionFilter, *, after: Candidate | None, limit: int
    ) -> list[Candidate]:
        found = sorted(
            (
                Candidate(r.id, r.created_at)
                for r in self.executions.records.values()
                if where.matches(r) and not self._kept(r, where.excluding)
            ),
            key=lambda c: (c.created_at, c.execution_id),
        )
        if after is not None:
            found = [
                c
                for c in found
                if (c.created_at, c.execution_id) > (after.created_at, after.execution_id)
            ]
        return found[:limit]

    def _kept(self, record: ExecutionRecord, rule: HoldBack | None) -> bool:
        return rule is not None and self.held is not None and self.held(record, rule)

    async def begin(
        self,
        operation_id: str,
        action: BulkAction,
        request_hash: str,
        request: dict[str, Any],
        requested_by: str,
    ) -> OperationRecord:
        existing = self.operations.get(operation_id)
        if existing is not None:
            return replace(existing, results=dict(existing.results), created=False)
        record = OperationRecord(operation_id, action, request_hash, request)
        self.operations[operation_id] = record
        return record

    async def take(self, operation_id: str, execution_ids: list[str]) -> list[str]:
        record = self.operations[operation_id]
        fresh = [i for i in execution_ids if i not in record.results]
        results = dict(record.results)
        for execution_id in fresh:
            results[execution_id] = ItemResult(Outcome.PENDING)
            self.taken.append((operation_id, execution_id))
        self.operations[operation_id] = replace(record, results=results)
        return fresh

    async def settle(self, operation_id: str, execution_id: str, result: ItemResult) -> None:
        record = self.operations[operation_id]
        self.operations[operation_id] = replace(
            record, results={**record.results, execution_id: result}
        )

    async def finish(self, operation_id: str, *, truncated: bool) -> None:
        record = self.operations[operation_id]
        self.operations[operation_id] = replace(record, finished=True, truncated=truncated)

    async def load(self, operation_id: str) -> OperationRecord | None:
        record = self.operations.get(operation_id)
        return None if record is None else replace(record, created=False)
