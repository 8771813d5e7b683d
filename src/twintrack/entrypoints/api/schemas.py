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


# -- admin: shadow runs and the scorecard (core/shadow.py, core/scorecard.py) ----------------


class ShadowMismatchOut(BaseModel):
    """One entry of the mismatch ledger: a shadow run that differed from its original."""

    id: int | None
    recorded_at: str | None
    original_id: str
    shadow_id: str
    flow_id: str
    flow_version: int
    original_track: str
    shadow_track: str
    #: unified diff of the normalized runs, original first
    diff: str
    #: both runs' normalized events, in stream order
    original_events: list[str]
    shadow_events: list[str]
    #: node id -> why it was not run in the shadow (side effects)
    replayed: dict[str, str]


class ShadowMismatchesOut(BaseModel):
    """The ledger, newest first (at most SHADOW_LEDGER_SIZE are kept)."""

    mismatches: list[ShadowMismatchOut]


class CohortScoreOut(BaseModel):
    """One track and cohort (`routed`, `rerouted`, or `all`) over the window."""

    track: str
    cohort: str
    executions: int
    completed: int
    failed: int
    error_rate: float | None
    shadow_runs: int
    shadow_matches: int
    consistency_rate: float | None
    p50_s: float | None
    p99_s: float | None
    queue_p50_s: float | None
    queue_p99_s: float | None
    recoveries: int


class ScorecardOut(BaseModel):
    """The rollout scorecard: executions that finished in the last `window_s` seconds."""

    window_s: float
    generated_at: str
    rows: list[CohortScoreOut]
