"""The records the use cases work with: executions, flows, claims, API keys and pages, as stored.

Immutable values, so a caller never holds a session or a lazy-loading ORM object; the stores
(adapters/postgres, adapters/memory) build them and the API serialises them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict

from twintrack.domain.execution import (
    EventsBackend,
    ExecutionOptions,
    ExecutionStatus,
    Track,
    TriggerEvent,
)

T = TypeVar("T")


class ExecutionRecord(BaseModel):
    """One execution, as stored: where it runs, how far it got, how it ended."""

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
    #: the W3C traceparent of the request that started it (None when tracing is off)
    traceparent: str | None = None
    #: the execution this one is a shadow run of (core/shadow.py); None for real ones
    shadow_of: str | None = None
    #: why an execution the rollout routed to DBOS was created on Kafka instead (DBOS admission
    #: failed and DBOS_FALLBACK_TO_KAFKA was on); None for every other execution
    fallback_reason: str | None = None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class FlowRef(NamedTuple):
    id: str
    version: int


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


MAX_PAGE_SIZE = 1000


class Page(BaseModel, Generic[T]):
    """One page of results; `next_cursor` is None on the last page."""

    model_config = ConfigDict(frozen=True)

    items: list[T]
    next_cursor: str | None = None


@dataclass(frozen=True)
class KeyReservation:
    """Who holds an idempotency key: `reserved` when this call took it (for `execution_id`),
    else the execution and request fingerprint of the earlier request that did."""

    execution_id: str
    request_hash: str
    reserved: bool


@dataclass(frozen=True)
class Claim:
    execution_id: str
    worker_id: str
    generation: int
    expires_at: datetime


@dataclass(frozen=True)
class ExpiredClaim:
    execution_id: str
    worker_id: str
    generation: int
    status: ExecutionStatus
    attempt: int


class ApiKeyRecord(BaseModel):
    """A stored key, without its secret."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: str
    owner_id: str
    prefix: str
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None


class CreatedApiKey(ApiKeyRecord):
    """A key as returned once, at creation: `key` is the only copy of the secret."""

    key: str


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the key's owner, and whether the key is an admin key.

    Admin only widens what a caller may ask for (choosing the track on create); it never widens
    what it can see: an admin key still sees only its own owner's flows and executions.
    """

    owner_id: str
    is_admin: bool = False
