"""The HTTP API's request and response bodies, shared by the API and `twintrack.client`.

One definition on both sides of the wire: the API validates and documents (OpenAPI) with these
models and the client parses answers into them, so the two cannot drift apart. Only pydantic
and the pure `twintrack.domain` modules are imported here, which keeps `import twintrack.client`
free of FastAPI, SQLAlchemy, DBOS and aiokafka.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from twintrack.core.records import ExecutionRecord, FlowRecord, FlowSummary
from twintrack.domain.commands import Command
from twintrack.domain.events import Event
from twintrack.domain.execution import (
    EventsBackend,
    ExecutionOptions,
    ExecutionStatus,
    Track,
    TriggerEvent,
)

__all__ = [
    "IDEMPOTENCY_KEY_HEADER",
    "ID_PATTERN",
    "MAX_IDEMPOTENCY_KEY_CHARS",
    "MAX_REASON_CHARS",
    "MAX_VERSION",
    "MAX_WAIT_S",
    "REPLAYED_HEADER",
    "CommandAccepted",
    "CommandRequest",
    "CreateExecution",
    "ErrorBody",
    "ErrorResponse",
    "Event",
    "ExecutionCreated",
    "ExecutionPage",
    "ExecutionRecord",
    "ExecutionTreeOut",
    "FlowCreated",
    "FlowDocument",
    "FlowEdgeDocument",
    "FlowNodeDocument",
    "FlowOut",
    "FlowPage",
    "FlowRecord",
    "FlowSummary",
]

# Ids this service hands out (`fl_…`, `ex_…`); anything else cannot exist.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
MAX_VERSION = 2**31 - 1  # the column is a 4-byte integer
MAX_REASON_CHARS = 1000
# `GET /v1/executions/{id}?wait=N` holds the request at most this long, whatever N asks: under
# the 60 s idle timeout of common load balancers, so a long-poll is never cut by a proxy.
MAX_WAIT_S = 30.0
# `POST /v1/executions` with this header is safe to retry: the same key (per owner) answers
# with the same execution for IDEMPOTENCY_KEY_TTL_S; answers that did not create say so in
# REPLAYED_HEADER.
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY_CHARS = 255
REPLAYED_HEADER = "Idempotent-Replayed"


# -- errors -----------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorBody


# -- flows ------------------------------------------------------------------------------------


class FlowNodeDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Unique in the flow, `[A-Za-z0-9_-]{1,64}`.")
    type: str = Field(description="A node type: const, math, template, delay, fail, emit, ...")
    config: dict[str, Any] = Field(default_factory=dict)


class FlowEdgeDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from", description="`nodeId.port` of an output port.")
    to: str = Field(description="`nodeId.port` of an input port (at most one edge each).")


class FlowDocument(BaseModel):
    """A flow as written by its author; at most 1 MiB."""

    model_config = ConfigDict(extra="forbid")

    name: str
    nodes: list[FlowNodeDocument]
    edges: list[FlowEdgeDocument] = Field(default_factory=list)


class FlowCreated(BaseModel):
    id: str
    version: int


class FlowOut(BaseModel):
    """One version of a flow; `latest_version` tells whether a newer one exists."""

    id: str
    owner_id: str
    version: int
    latest_version: int
    name: str
    definition: FlowDocument
    created_at: datetime
    updated_at: datetime
    version_created_at: datetime


class FlowPage(BaseModel):
    items: list[FlowSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: done.")


# -- executions -------------------------------------------------------------------------------


class CreateExecution(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flow_id: str = Field(pattern=ID_PATTERN)
    version: int | None = Field(
        default=None, ge=1, le=MAX_VERSION, description="Default: the latest version."
    )
    options: ExecutionOptions | None = None
    events: list[TriggerEvent] = Field(
        default_factory=list, description="Start as if triggered by these events (`listen`)."
    )
    track: Track | None = Field(
        default=None,
        description=(
            "Admin keys only (else 403 `forbidden`): run on this track instead of the one the "
            "rollout settings pick, e.g. to compare both tracks on one flow. Default: the "
            "rollout settings decide."
        ),
    )
    start: bool = Field(
        default=False,
        description=(
            "Start it at once, as `POST /{id}/start` would, in the same request: the answer's "
            "`status` is then `queued` (or later). When the start is refused (429 "
            "`limit_exceeded`, 503), the execution exists all the same, `created`: the error "
            "answer's `Location` names it, and a retry under the same `Idempotency-Key` "
            "starts that one. Not part of what the key compares."
        ),
    )


class ExecutionCreated(BaseModel):
    id: str
    status: ExecutionStatus
    track: Track
    events_backend: EventsBackend


class ExecutionPage(BaseModel):
    items: list[ExecutionRecord]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: done.")


class ExecutionTreeOut(BaseModel):
    root_id: str = Field(description="The execution asked for: the root of this subtree.")
    tree_status: ExecutionStatus = Field(
        description="Of the whole subtree, not just this page: `running` while any member is "
        "unfinished, else the worst ending."
    )
    size: int = Field(description="Members of the whole subtree (every page together).")
    executions: list[ExecutionRecord] = Field(
        description="This page of members: by depth, then age."
    )
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: done.")


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=MAX_REASON_CHARS)


class CommandAccepted(BaseModel):
    id: str
    command: Command
    status: ExecutionStatus = Field(description="The status right after the command was taken.")
