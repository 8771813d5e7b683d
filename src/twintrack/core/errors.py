"""What stores raise, so the API layer can map each to one HTTP answer without knowing SQL."""

from __future__ import annotations

from twintrack.domain.execution import ExecutionStatus, IllegalTransition


class StoreError(Exception):
    """Base class of the errors a store raises on purpose."""


class NotFound(StoreError):
    """No such row for this owner: another owner's row is reported exactly like a missing one."""

    def __init__(self, kind: str, key: object) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} {key!r} not found")


class AlreadyExists(StoreError):
    """A row with this id exists already (an at-least-once caller may then just read it)."""

    def __init__(self, kind: str, key: object) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} {key!r} already exists")


class InvalidCursor(StoreError, ValueError):
    """A pagination cursor this store did not issue (or that was tampered with)."""


class UnexpectedStatus(IllegalTransition):
    """A transition refused because the execution was not in a status the caller expected.

    A subclass of IllegalTransition, so callers that only care "the move did not happen" catch one
    exception type.
    """

    def __init__(
        self,
        execution_id: str,
        current: ExecutionStatus,
        target: ExecutionStatus,
        expected: frozenset[ExecutionStatus],
    ) -> None:
        super().__init__(execution_id, current, target)
        self.expected = expected
        wanted = ", ".join(sorted(expected))
        self.args = (
            f"execution {execution_id}: is '{current}', expected one of [{wanted}] "
            f"to move to '{target}'",
        )
