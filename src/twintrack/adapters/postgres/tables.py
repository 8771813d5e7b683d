"""The schema, as SQLAlchemy 2 declarative models on one metadata (Alembic mirrors it by hand).

Closed sets (status, track, events backend) are TEXT columns with named CHECK constraints rather
than native enum types: adding a value is a one-line constraint swap and a downgrade leaves no type
behind. `executions` is the single source of truth both tracks read and write.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    MetaData,
    Text,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from twintrack.domain.execution import EventsBackend, ExecutionStatus, Track
from twintrack.domain.rollout import TrackPhase

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in_list(column: str, values: Iterable[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


NON_TERMINAL_STATUSES = tuple(s for s in ExecutionStatus if not s.is_terminal)
NON_TERMINAL_SQL = _in_list("status", NON_TERMINAL_STATUSES)


E = TypeVar("E", bound=StrEnum)


class StrEnumText(TypeDecorator[E]):
    """Stores a StrEnum as its TEXT value and reads it back as the enum member."""

    impl = Text
    cache_ok = True

    def __init__(self, enum_type: type[E]) -> None:
        super().__init__()
        self.enum_type = enum_type

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum_type(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> E | None:
        return None if value is None else self.enum_type(value)


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class FlowRow(Base):
    __tablename__ = "flows"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    owner_id: Mapped[str] = mapped_column(Text, nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    latest_version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("latest_version >= 1", name="latest_version_positive"),
        # Listing by owner, newest first (a backward scan serves created_at DESC, id DESC).
        Index(None, "owner_id", "created_at", "id"),
    )


class FlowVersionRow(Base):
    __tablename__ = "flow_versions"

    flow_id: Mapped[str] = mapped_column(
        Text, ForeignKey("flows.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = _now()

    __table_args__ = (CheckConstraint("version >= 1", name="version_positive"),)


class ExecutionRow(Base):
    __tablename__ = "executions"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    root_id: Mapped[str] = mapped_column(Text, nullable=False)
    parent_id: Mapped[str | None] = mapped_column(Text, ForeignKey("executions.id"))
    depth: Mapped[int] = mapped_column(Integer, nullable=False)
    owner_id: Mapped[str] = mapped_column(Text, nullable=False)
    flow_id: Mapped[str] = mapped_column(Text, nullable=False)
    flow_version: Mapped[int] = mapped_column(Integer, nullable=False)
    track: Mapped[Track] = mapped_column(StrEnumText(Track), nullable=False)
    events_backend: Mapped[EventsBackend] = mapped_column(
        StrEnumText(EventsBackend), nullable=False
    )
    status: Mapped[ExecutionStatus] = mapped_column(StrEnumText(ExecutionStatus), nullable=False)
    options: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    trigger_events: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")
    )
    outputs: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    error_message: Mapped[str | None] = mapped_column(Text)
    error_node_id: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    # The index the next event of this execution gets; a re-run continues from here.
    next_event_index: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("0")
    )
    # The W3C traceparent of the request that started it, for the worker to continue.
    traceparent: Mapped[str | None] = mapped_column(Text)
    #: a shadow run of that execution (core/shadow.py): hidden from its owner
    shadow_of: Mapped[str | None] = mapped_column(Text)
    # Why DBOS admission failed for an execution the rollout routed there (it runs on Kafka).
    fallback_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (
        ForeignKeyConstraint(
            ["flow_id", "flow_version"], ["flow_versions.flow_id", "flow_versions.version"]
        ),
        CheckConstraint(_in_list("status", ExecutionStatus), name="status"),
        CheckConstraint(_in_list("track", Track), name="track"),
        CheckConstraint(_in_list("events_backend", EventsBackend), name="events_backend"),
        CheckConstraint("depth >= 0", name="depth_not_negative"),
        CheckConstraint("(parent_id IS NULL) = (depth = 0)", name="root_has_depth_zero"),
        CheckConstraint("parent_id IS NOT NULL OR root_id = id", name="root_is_own_root"),
        CheckConstraint("attempt >= 0", name="attempt_not_negative"),
        CheckConstraint("next_event_index >= 0", name="next_event_index_not_negative"),
        # GET /v1/executions: owner's executions newest first, optionally for one flow.
        Index(None, "owner_id", "created_at", "id"),
        Index(None, "owner_id", "flow_id", "created_at", "id"),
        # rollout status, start-timeout sweep and recovery: the (few) unfinished executions.
        Index(
            "ix_executions_unfinished",
            "track",
            "status",
            "created_at",
            postgresql_where=text(NON_TERMINAL_SQL),
        ),
        # MAX_RUNNING_EXECUTIONS_PER_OWNER: an owner's unfinished executions, counted per start.
        Index(
            "ix_executions_owner_unfinished",
            "owner_id",
            "status",
            postgresql_where=text(NON_TERMINAL_SQL),
        ),
        # The rollout guard's sliding window: executions that finished lately.
        Index(
            "ix_executions_finished_at",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL"),
        ),
        # At most one shadow run per execution.
        Index(
            "ix_executions_shadow_of",
            "shadow_of",
            unique=True,
            postgresql_where=text("shadow_of IS NOT NULL"),
        ),
        # The guard's window: executions that fell back to Kafka at admission lately.
        Index(
            "ix_executions_fallback_created_at",
            "created_at",
            postgresql_where=text("fallback_reason IS NOT NULL"),
        ),
        # Trees: every execution of a root, and the children of one execution.
        Index(None, "root_id"),
        Index(None, "parent_id"),
    )


class ExecutionClaimRow(Base):
    """Kafka track: who runs an execution now, until when, under which fencing generation."""

    __tablename__ = "execution_claims"

    execution_id: Mapped[str] = mapped_column(
        Text, ForeignKey("executions.id", ondelete="CASCADE"), primary_key=True
    )
    worker_id: Mapped[str] = mapped_column(Text, nullable=False)
    generation: Mapped[int] = mapped_column(BigInteger, nullable=False)
    claimed_at: Mapped[datetime] = _now()
    heartbeat_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (
        CheckConstraint("generation >= 1", name="generation_positive"),
        Index(None, "expires_at"),
        Index(None, "worker_id"),
    )


class WorkerRow(Base):
    """Worker processes and their heartbeats, for the sweeper that serves both tracks."""

    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(Text, primary_key=True)
    tracks: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    hostname: Mapped[str] = mapped_column(Text, nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = _now()
    heartbeat_at: Mapped[datetime] = _now()
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ExecutionRecoveryRow(Base):
    """Audit trail: every attempt that ended without an outcome (a crash, a lost lease, a
    handover at shutdown), every re-delivery, and why."""

    __tablename__ = "execution_recoveries"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    execution_id: Mapped[str] = mapped_column(
        Text, ForeignKey("executions.id", ondelete="CASCADE"), nullable=False
    )
    track: Mapped[Track] = mapped_column(StrEnumText(Track), nullable=False)
    recovered_at: Mapped[datetime] = _now()
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    previous_worker_id: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    #: what happened, in words (the text a give-up after MAX_ATTEMPTS quotes)
    detail: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(_in_list("track", Track), name="track"),
        Index(None, "execution_id"),
    )


class ApiKeyRow(Base):
    """API keys: only the SHA-256 of the secret is stored; `prefix` lets a user tell keys apart."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    owner_id: Mapped[str] = mapped_column(Text, nullable=False)
    key_hash: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    prefix: Mapped[str] = mapped_column(Text, nullable=False)
    # Admin keys may choose an execution's track on create (`twintrack compare`).
    is_admin: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index(None, "owner_id"),)


class TallyCounterRow(Base):
    """Durable counters behind the `tally` node: a real side effect to test exactly-once against."""

    __tablename__ = "tally_counters"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = _now()


class TallyIncrementRow(Base):
    """One row per keyed `tally` increment (execution/attempt/node): a retried increment finds
    its row and returns the count it produced instead of counting again."""

    __tablename__ = "tally_increments"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = _now()


class ExecutionCommandRow(Base):
    """Commands sent to an execution, durable so a worker that claims it later still obeys."""

    __tablename__ = "execution_commands"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    execution_id: Mapped[str] = mapped_column(
        Text, ForeignKey("executions.id", ondelete="CASCADE"), nullable=False
    )
    command: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("command IN ('pause', 'resume', 'step', 'stop')", name="command"),
        Index(None, "execution_id", "id"),
    )


class KafkaEventLogRow(Base):
    """Where an execution's events start in Kafka, so a replay seeks there instead of offset 0."""

    __tablename__ = "kafka_event_logs"

    execution_id: Mapped[str] = mapped_column(
        Text, ForeignKey("executions.id", ondelete="CASCADE"), primary_key=True
    )
    topic: Mapped[str] = mapped_column(Text, nullable=False)
    partition: Mapped[int] = mapped_column(Integer, nullable=False)
    first_offset: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = _now()


class OwnerAdmissionRow(Base):
    """A start admitted under the owner's running limit and not yet committed (migration 0013).

    It counts as running for the owner's other starts until its own transaction commits
    `queued` and deletes it, or it lapses (its start died). No foreign key: the insert would
    wait on the row lock the same start holds on the execution.
    """

    __tablename__ = "owner_admissions"

    execution_id: Mapped[str] = mapped_column(Text, primary_key=True)
    owner_id: Mapped[str] = mapped_column(Text, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (Index(None, "owner_id"),)


class IdempotencyKeyRow(Base):
    """`Idempotency-Key` of a create: the execution a key made, so a retried create answers
    with it instead of making another. The key is reserved (with the execution's id chosen up
    front) before the execution exists, hence no foreign key; the primary key makes two
    concurrent creates with one key agree on one id. Rows older than IDEMPOTENCY_KEY_TTL_S no
    longer count and are deleted as new keys come in."""

    __tablename__ = "idempotency_keys"

    owner_id: Mapped[str] = mapped_column(Text, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    # SHA-256 of the request a key was first used with: another body under the key is refused.
    request_hash: Mapped[str] = mapped_column(Text, nullable=False)
    execution_id: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _now()

    __table_args__ = (Index(None, "created_at"),)


metadata = Base.metadata


class RolloutStateRow(Base):
    """The live rollout (one row, id 1): where new executions go, read by every API process."""

    __tablename__ = "rollout_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    enable_dbos: Mapped[bool] = mapped_column(Boolean, nullable=False)
    rollout_percent: Mapped[int | None] = mapped_column(Integer)
    events_backend: Mapped[EventsBackend] = mapped_column(
        StrEnumText(EventsBackend), nullable=False
    )
    #: the share of completed root executions shadowed on the other track (core/shadow.py)
    shadow_percent: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    fallback_to_kafka: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    #: bumped by every change; an API process applies a state only if newer than its own
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    changed_at: Mapped[datetime] = _now()
    changed_by: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)

    __table_args__ = (
        CheckConstraint("id = 1", name="single_row"),
        CheckConstraint("rollout_percent BETWEEN 0 AND 100", name="percent"),
        CheckConstraint("shadow_percent BETWEEN 0 AND 100", name="shadow_percent"),
        CheckConstraint(_in_list("events_backend", EventsBackend), name="events_backend"),
    )


class RolloutHistoryRow(Base):
    """Every rollout state ever in force: when, who (a key's owner, a CLI user, the guard), why."""

    __tablename__ = "rollout_history"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    changed_at: Mapped[datetime] = _now()
    changed_by: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    enable_dbos: Mapped[bool] = mapped_column(Boolean, nullable=False)
    rollout_percent: Mapped[int | None] = mapped_column(Integer)
    events_backend: Mapped[EventsBackend] = mapped_column(
        StrEnumText(EventsBackend), nullable=False
    )
    shadow_percent: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    fallback_to_kafka: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    kafka_phase: Mapped[TrackPhase] = mapped_column(StrEnumText(TrackPhase), nullable=False)
    dbos_phase: Mapped[TrackPhase] = mapped_column(StrEnumText(TrackPhase), nullable=False)

    __table_args__ = (
        CheckConstraint(_in_list("events_backend", EventsBackend), name="events_backend"),
        CheckConstraint(_in_list("kafka_phase", TrackPhase), name="kafka_phase"),
        CheckConstraint(_in_list("dbos_phase", TrackPhase), name="dbos_phase"),
    )


class GuardVerdictRow(Base):
    """Each verdict of the rollout guard, with the figures it was reached on."""

    __tablename__ = "rollout_guard_verdicts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    decided_at: Mapped[datetime] = _now()
    verdict: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    #: failed verdicts in a row, this one included (a pass resets it, inconclusive keeps it)
    consecutive_failures: Mapped[int] = mapped_column(Integer, nullable=False)
    rolled_back: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    figures: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)

    __table_args__ = (
        CheckConstraint("verdict IN ('pass', 'fail', 'inconclusive')", name="verdict"),
    )


SHADOW_STATUSES = ("running", "matched", "mismatched")


class ShadowRunRow(Base):
    """One shadow run per sampled execution (the primary key makes it at most one): running
    until the shadow ends, then matched or mismatched (core/shadow.py)."""

    __tablename__ = "shadow_runs"

    original_id: Mapped[str] = mapped_column(Text, primary_key=True)
    shadow_id: Mapped[str] = mapped_column(Text, nullable=False)
    owner_id: Mapped[str] = mapped_column(Text, nullable=False)
    flow_id: Mapped[str] = mapped_column(Text, nullable=False)
    flow_version: Mapped[int] = mapped_column(Integer, nullable=False)
    original_track: Mapped[Track] = mapped_column(StrEnumText(Track), nullable=False)
    shadow_track: Mapped[Track] = mapped_column(StrEnumText(Track), nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    #: node id -> why it did not run in the shadow (side effects)
    replayed: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    scheduled_at: Mapped[datetime] = _now()
    compared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(f"status IN {SHADOW_STATUSES!r}", name="status"),
        # the sweep's "shadows still running" (few), and the scorecard's window
        Index(
            "ix_shadow_runs_running", "scheduled_at", postgresql_where=text("status = 'running'")
        ),
        Index(None, "compared_at"),
    )


class ShadowMismatchRow(Base):
    """The mismatch ledger: the most recent SHADOW_LEDGER_SIZE shadow runs that differed."""

    __tablename__ = "shadow_mismatches"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    recorded_at: Mapped[datetime] = _now()
    original_id: Mapped[str] = mapped_column(Text, nullable=False)
    shadow_id: Mapped[str] = mapped_column(Text, nullable=False)
    flow_id: Mapped[str] = mapped_column(Text, nullable=False)
    flow_version: Mapped[int] = mapped_column(Integer, nullable=False)
    original_track: Mapped[Track] = mapped_column(StrEnumText(Track), nullable=False)
    shadow_track: Mapped[Track] = mapped_column(StrEnumText(Track), nullable=False)
    diff: Mapped[str] = mapped_column(Text, nullable=False)
    #: both runs' normalized events in stream order (lines of domain.comparison.view)
    original_events: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    shadow_events: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    replayed: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )


class BulkOperationRow(Base):
    """A bulk stop or reroute by filter, kept by its operation id: a request sent again with the
    id answers what the first one did instead of acting again."""

    __tablename__ = "bulk_operations"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    action: Mapped[str] = mapped_column(Text, nullable=False)
    #: SHA-256 of the action and its parameters: the same id with another request is refused
    request_hash: Mapped[str] = mapped_column(Text, nullable=False)
    request: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    requested_by: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: more executions matched than BULK_MAX_IDS: the rest were left for another operation
    truncated: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())

    __table_args__ = (
        CheckConstraint("action IN ('stop', 'reroute')", name="action"),
        Index(None, "created_at"),
    )


class BulkOperationItemRow(Base):
    """One execution of a bulk operation: taken (inserted) before it is acted on, so however
    often the operation is retried, each execution is acted on at most once."""

    __tablename__ = "bulk_operation_items"

    operation_id: Mapped[str] = mapped_column(
        Text, ForeignKey("bulk_operations.id", ondelete="CASCADE"), primary_key=True
    )
    execution_id: Mapped[str] = mapped_column(Text, primary_key=True)
    #: `pending` while (or if a crash left it) being acted on, then the outcome
    outcome: Mapped[str] = mapped_column(Text, nullable=False)
    detail: Mapped[str | None] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
