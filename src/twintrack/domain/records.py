"""The rows callers read: an execution and a flow, as stored and as the API shows them.

Plain pydantic (no SQL), so the stores, the API and `twintrack.client` share one definition
and a field added to the row reaches every reader at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from twintrack.domain.execution import (
    EventsBackend,
    ExecutionOptions,
    ExecutionStatus,
    Track,
    TriggerEvent,
)


class ExecutionRecord(BaseModel):
    """One execution row: ids, owner, pinned flow version, track, status, timestamps, outcome."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: str
    root_id: str
    parent_id: str | None
    depth: int
    owner_id: str
    flow_id: str
    flow_version: int
    track: Track
    events_backend: EventsBackend
    status: ExecutionStatus
    options: ExecutionOptions
    trigger_events: tuple[TriggerEvent, ...]
    outputs: dict[str, Any]
    error_message: str | None
    error_node_id: str | None
    attempt: int
    next_event_index: int
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class FlowSummary(BaseModel):
    """A flow without its definition, as listed."""

    model_config = ConfigDict(frozen=True)

    id: str
    owner_id: str
    name: str
    latest_version: int
    created_at: datetime
    updated_at: datetime


class FlowRecord(FlowSummary):
    """One version of a flow with its definition; `name` is the name saved with that version."""

    version: int
    definition: dict[str, Any]
    version_created_at: datetime
