"""Request and response bodies of `/v1/admin/...`, as they appear in OpenAPI.

Every admin answer is a typed model (not a bare dict), so the published OpenAPI documents each
field and generated clients get real types. The shapes are those of the core reports'
`to_json()` (the CLI's `--json` prints the same), validated into these models on the way out.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from twintrack.api_models import ID_PATTERN, MAX_REASON_CHARS
from twintrack.domain.execution import EventsBackend, ExecutionStatus, Track
from twintrack.domain.rollout import TrackPhase

# -- the live rollout ---------------------------------------------------------------------------


class RolloutUpdate(BaseModel):
    """Fields left out stay as they are; `rollout_percent: null` clears the cohort."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000)
    enable_dbos: bool | None = None
    rollout_percent: int | None = Field(default=None, ge=0, le=100)
    events_backend: EventsBackend | None = None
    shadow_percent: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Share of completed root executions re-run on the other track (shadow runs).",
    )
    fallback_to_kafka: bool | None = Field(
        default=None,
        description="An execution routed to DBOS whose DBOS admission fails is created on Kafka "
        "(with its `fallback_reason`) instead of being refused with a 503.",
    )
    expected_version: int | None = Field(
        default=None,
        ge=1,
        description="Apply only over this version (compare-and-set): 409 `conflict` when the "
        "rollout changed since the caller read it.",
    )


class RolloutStateOut(BaseModel):
    """One version of the live rollout."""

    version: int
    enable_dbos: bool
    rollout_percent: int | None = Field(description="The sticky per-owner DBOS cohort; null: none.")
    events_backend: EventsBackend = Field(description="Of new DBOS-track executions.")
    fallback_to_kafka: bool
    shadow_percent: int = Field(description="Share of completed root executions shadowed.")
    dbos_share: int = Field(description="Percent of owners whose new executions go to DBOS.")
    phases: dict[Track, TrackPhase] = Field(description="Each track's phase under this state.")
    changed_at: datetime
    changed_by: str = Field(description="An admin key's owner, a CLI user, `guard`, ...")
    reason: str


class TrackStatusOut(BaseModel):
    counts: dict[ExecutionStatus, int]
    unfinished: int
    oldest_unfinished_age_s: float | None
    drained: bool = Field(description="Nothing unfinished is left on the track.")
    phase: TrackPhase | None = None


class RolloutOverviewOut(BaseModel):
    state: RolloutStateOut | None = Field(description="The state in force (null: not seeded).")
    history: list[RolloutStateOut] = Field(description="Newest first.")
    tracks: dict[Track, TrackStatusOut]
    includes_finished: bool


# -- bulk actions by filter ---------------------------------------------------------------------


class ExecutionFilterIn(BaseModel):
    """Every field given must match; an empty filter selects every execution the action may
    act on (unfinished ones for a stop, unstarted ones for a reroute)."""

    model_config = ConfigDict(extra="forbid")

    track: Track | None = None
    status: list[ExecutionStatus] | None = Field(default=None, description="Any of these.")
    flow_id: str | None = Field(default=None, pattern=ID_PATTERN)
    owner: str | None = Field(default=None, min_length=1, max_length=200)
    created_before: datetime | None = Field(default=None, description="Strictly before.")
    created_after: datetime | None = Field(default=None, description="At or after.")


_OPERATION_ID = Field(
    default=None,
    pattern=ID_PATTERN,
    description="Makes the action safe to retry: the same id answers the result it recorded "
    "and acts on no execution twice (another request under it: 422). Default: a new one "
    "(returned). Ignored by a dry run.",
)
_DRY_RUN = Field(
    default=True,
    description="Only list what would be acted on (the default: send `false` to act).",
)


class BulkStopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filter: ExecutionFilterIn = Field(default_factory=ExecutionFilterIn)
    reason: str = Field(
        default="stopped by a bulk action", min_length=1, max_length=MAX_REASON_CHARS
    )
    dry_run: bool = _DRY_RUN
    operation_id: str | None = _OPERATION_ID


class BulkRerouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filter: ExecutionFilterIn = Field(default_factory=ExecutionFilterIn)
    to: Track = Field(default=Track.KAFKA, description="The track to move executions to.")
    include_dbos_streams: bool = Field(
        default=True, description="Also move executions whose events are in DBOS streams."
    )
    dry_run: bool = _DRY_RUN
    operation_id: str | None = _OPERATION_ID


class BulkItemOut(BaseModel):
    outcome: str = Field(
        description="stopped, moved, skipped, failed, pending (taken, outcome unknown: a crash "
        "or a concurrent retry), or on a dry run `would stop` / `would move`"
    )
    detail: str | None = None


class BulkResultOut(BaseModel):
    operation_id: str | None = Field(description="Null on a dry run.")
    action: str = Field(description="`stop` or `reroute`.")
    dry_run: bool
    replayed: bool = Field(description="The operation id was seen before: its recorded result.")
    truncated: bool = Field(
        description="More executions matched than BULK_MAX_IDS: the rest are left for another "
        "operation."
    )
    request: dict[str, object] = Field(description="The action's parameters, as recorded.")
    counts: dict[str, int] = Field(description="Executions by outcome.")
    results: dict[str, BulkItemOut] = Field(description="Per execution id.")
