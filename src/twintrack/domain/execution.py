"""Execution states, the legal moves between them, and the options a caller may set."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ExecutionStatus(StrEnum):
    CREATED = "created"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.STOPPED}
)

_S = ExecutionStatus
# running/paused -> queued is the re-delivery of a crashed attempt by recovery.
ALLOWED_TRANSITIONS: dict[ExecutionStatus, frozenset[ExecutionStatus]] = {
    _S.CREATED: frozenset({_S.QUEUED, _S.FAILED, _S.STOPPED}),
    # queued -> completed records an ending a crashed run already wrote to the stream, found
    # when the execution is ended before any worker takes it again (a stop after a crash).
    _S.QUEUED: frozenset({_S.RUNNING, _S.COMPLETED, _S.FAILED, _S.STOPPED}),
    _S.RUNNING: frozenset({_S.PAUSED, _S.COMPLETED, _S.FAILED, _S.STOPPED, _S.QUEUED}),
    _S.PAUSED: frozenset({_S.RUNNING, _S.COMPLETED, _S.FAILED, _S.STOPPED, _S.QUEUED}),
    _S.COMPLETED: frozenset(),
    _S.FAILED: frozenset(),
    _S.STOPPED: frozenset(),
}


class IllegalTransition(Exception):
    """A status change the state machine does not allow (for example, out of a terminal state)."""

    def __init__(self, execution_id: str, current: ExecutionStatus, target: ExecutionStatus):
        self.execution_id = execution_id
        self.current = current
        self.target = target
        super().__init__(f"execution {execution_id}: cannot move from '{current}' to '{target}'")


def can_transition(current: ExecutionStatus, target: ExecutionStatus) -> bool:
    return target in ALLOWED_TRANSITIONS[current]


def check_transition(execution_id: str, current: ExecutionStatus, target: ExecutionStatus) -> None:
    if not can_transition(current, target):
        raise IllegalTransition(execution_id, current, target)


class Track(StrEnum):
    KAFKA = "kafka"
    DBOS = "dbos"


class EventsBackend(StrEnum):
    KAFKA = "kafka"
    DBOS = "dbos"


class ExecutionOptions(BaseModel):
    """What a caller may tune per execution. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    debug: bool = False
    breakpoints: list[str] = Field(default_factory=list)
    max_concurrency: int = Field(default=8, ge=1, le=1000)
    node_timeout_s: float = Field(default=3600, gt=0, le=7 * 24 * 3600)
    flow_timeout_s: float = Field(default=3600, gt=0, le=7 * 24 * 3600)
    inputs: dict[str, Any] = Field(default_factory=dict)


class TriggerEvent(BaseModel):
    """An event that starts a child execution (or a root created with `events`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=256)
    payload: Any = None
