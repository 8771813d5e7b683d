"""Request and response bodies of the HTTP API, as they appear in OpenAPI.

The bodies a client sends or reads live in `twintrack.api_models`, shared with
`twintrack.client`; this module adds what only the server needs (id checks, health answers).
Rows go out as the stores' own records (`ExecutionRecord`, `FlowSummary`), so the API shows
every stored field without a second model to keep in step.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

from twintrack.api_models import (
    ID_PATTERN,
    IDEMPOTENCY_KEY_HEADER,
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_REASON_CHARS,
    MAX_VERSION,
    MAX_WAIT_S,
    REPLAYED_HEADER,
    CommandAccepted,
    CommandRequest,
    CreateExecution,
    ExecutionCreated,
    ExecutionPage,
    ExecutionTreeOut,
    FlowCreated,
    FlowDocument,
    FlowEdgeDocument,
    FlowNodeDocument,
    FlowOut,
    FlowPage,
)

__all__ = [
    "IDEMPOTENCY_KEY_HEADER",
    "ID_PATTERN",
    "ID_RE",
    "MAX_IDEMPOTENCY_KEY_CHARS",
    "MAX_REASON_CHARS",
    "MAX_VERSION",
    "MAX_WAIT_S",
    "REPLAYED_HEADER",
    "CommandAccepted",
    "CommandRequest",
    "CreateExecution",
    "ExecutionCreated",
    "ExecutionPage",
    "ExecutionTreeOut",
    "FlowCreated",
    "FlowDocument",
    "FlowEdgeDocument",
    "FlowNodeDocument",
    "FlowOut",
    "FlowPage",
    "Liveness",
    "Readiness",
]

# Anything not shaped like an id this service hands out cannot exist, so it is answered 404
# without a query (and never reaches Postgres, which rejects e.g. NUL characters in text).
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")


# -- health -----------------------------------------------------------------------------------


class Liveness(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    status: str = "ready"
    checks: dict[str, bool]
