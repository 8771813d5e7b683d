"""The event envelope every subscriber sees, and the closed set of event types."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EventType(StrEnum):
    EXECUTION_CREATED = "execution.created"
    EXECUTION_QUEUED = "execution.queued"
    EXECUTION_STARTED = "execution.started"
    EXECUTION_PAUSED = "execution.paused"
    EXECUTION_RESUMED = "execution.resumed"
    EXECUTION_COMPLETED = "execution.completed"
    EXECUTION_FAILED = "execution.failed"
    EXECUTION_STOPPED = "execution.stopped"
    EXECUTION_RETRYING = "execution.retrying"
    NODE_STARTED = "node.started"
    NODE_COMPLETED = "node.completed"
    NODE_FAILED = "node.failed"
    NODE_SKIPPED = "node.skipped"
    NODE_LOG = "node.log"
    DEBUG_BREAKPOINT = "debug.breakpoint"
    CHILD_SPAWNED = "child.spawned"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_EVENT_TYPES


TERMINAL_EVENT_TYPES = frozenset(
    {EventType.EXECUTION_COMPLETED, EventType.EXECUTION_FAILED, EventType.EXECUTION_STOPPED}
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """One event of one execution; `index` is contiguous from 0 per execution."""

    model_config = ConfigDict(frozen=True)

    execution_id: str
    index: int = Field(ge=0)
    type: EventType
    timestamp: datetime = Field(default_factory=utcnow)
    data: dict[str, Any] = Field(default_factory=dict)
