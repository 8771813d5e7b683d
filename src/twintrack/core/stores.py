"""The stores the use cases need, in their own terms: what is kept, never how.

Each is a Protocol; adapters/postgres implements them on PostgreSQL, adapters/memory in memory
for the use-case unit tests. A use case that must change several things as one step (publish
an event and move the status; give up and end the claim) gets a `LockedExecution`: everything
done through it commits together, or not at all.
"""

from __future__ import annotations

from typing import Any, Protocol

from twintrack.core.records import ExecutionRecord
from twintrack.domain.execution import ExecutionStatus


class LockedExecution(Protocol):
    """One execution under its row lock, for one transaction."""

    record: ExecutionRecord

    async def transition(
        self,
        target: ExecutionStatus,
        *,
        outputs: dict[str, Any] | None = None,
        error_message: str | None = None,
        error_node_id: str | None = None,
        next_event_index: int | None = None,
    ) -> ExecutionRecord:
        """Move the status (the state machine decides; IllegalTransition otherwise)."""
        ...

    async def owner_running_count(self) -> int:
        """The owner's started, unfinished executions, exact until this transaction ends
        (concurrent starts of the owner wait; TimeoutError after a bounded wait)."""
        ...
