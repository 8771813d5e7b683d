"""Settings from the environment and `.env`, checked as a whole at start-up.

Every process (API, worker, CLI) loads them through `load_settings`, which turns any invalid
value or combination into one `ConfigError` naming the variables at fault, so a bad deploy
fails loudly before it touches an execution.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from twintrack.domain.execution import EventsBackend, Track
from twintrack.domain.limits import (
    DEFAULT_MAX_EXECUTIONS_PER_TREE,
    DEFAULT_MAX_RUNNING_EXECUTIONS_PER_OWNER,
    DEFAULT_MAX_SSE_STREAMS_PER_KEY,
)

PositiveSeconds = Annotated[float, Field(gt=0)]


class ConfigError(Exception):
    """The configuration cannot work; the message names each variable and what is wrong."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", validate_default=True
    )

    # -- where things are -------------------------------------------------------------------
    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset means embedded servers in `dev`."
    )
    kafka_bootstrap_servers: str | None = Field(default=None, description="host:port[,...]")

    # -- rollout ----------------------------------------------------------------------------
    enable_dbos_execution: bool = Field(
        default=False, description="New executions go to the DBOS track (else Kafka)."
    )
    dbos_rollout_percent: int | None = Field(
        default=None, ge=0, le=100, description="Sticky per-owner DBOS cohort; overrides the flag."
    )
    execution_events_backend: EventsBackend = Field(
        default=EventsBackend.KAFKA, description="Where DBOS-track executions write events."
    )

    rollout_source: Literal["database", "environment"] = Field(
        default="database",
        description="`database`: the live rollout state (seeded from the three settings above "
        "when empty) rules new executions; `environment`: this process ignores it and routes by "
        "the settings above (an emergency override).",
    )
    rollout_refresh_s: PositiveSeconds = Field(
        default=1.0,
        description="How often an API process re-reads the live rollout besides LISTEN/NOTIFY.",
    )
    dbos_fallback_to_kafka: bool = Field(
        default=False,
        description="An execution routed to DBOS whose DBOS admission fails is created on the "
        "Kafka track instead (recorded as its `fallback_reason`); off: the create answers 503. "
        "Seeds the live rollout like the three switches above.",
    )
    dbos_admission_timeout_s: PositiveSeconds = Field(
        default=2.0,
        description="How long the DBOS admission check (system schema, rights) may take before "
        "it counts as a failed admission. Long enough that a busy database's slow answer is not "
        "mistaken for a broken one; short enough that a create answers 503 within seconds.",
    )
    dbos_admission_cache_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="How long one DBOS admission check answers for every create of a process.",
    )

    # -- bulk actions by filter (core/bulk.py) ----------------------------------------------------
    bulk_max_ids: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Most executions one bulk stop or reroute acts on (the rest: a new operation).",
    )
    bulk_page_size: int = Field(
        default=100, ge=1, le=1000, description="Executions a bulk operation reads per page."
    )

    # -- the rollout guard (core/guard.py) ------------------------------------------------------
    guard_enabled: bool = Field(
        default=False, description="Workers elect one rollout guard that may roll DBOS back."
    )
    guard_interval_s: PositiveSeconds = 10
    guard_window_s: PositiveSeconds = 300
    guard_initial_delay_s: float = Field(default=60, ge=0, le=86_400)
    guard_min_samples: int = Field(default=20, ge=1, le=1_000_000)
    guard_max_error_rate_delta: float = Field(default=0.05, ge=0, le=1)
    guard_max_p99_ratio: float = Field(default=2.0, gt=0)
    guard_stuck_after_s: PositiveSeconds = 300
    guard_max_stuck: int = Field(default=0, ge=0)
    guard_failures_to_rollback: int = Field(default=2, ge=1, le=1000)
    guard_reroute_unstarted: bool = Field(
        default=False, description="On rollback, also move unstarted DBOS executions to Kafka."
    )
    guard_max_mismatch_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="`fail` when more of the shadow runs compared in the window differ.",
    )
    guard_min_shadow_samples: int = Field(
        default=5, ge=1, description="Shadow runs compared before their mismatch rate is judged."
    )

    # -- shadow runs (core/shadow.py) and the scorecard (core/scorecard.py) ---------------------
    shadow_percent: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Initial share of completed root executions re-run on the other track "
        "(a live field of the rollout state after that: `rollout set --shadow-percent`).",
    )
    shadow_max_running: int = Field(
        default=4, ge=1, le=10_000, description="Shadow runs unfinished at once, at most."
    )
    shadow_shed_queued: int = Field(
        default=50,
        ge=0,
        description="No shadow is scheduled onto a track with more real executions queued.",
    )
    shadow_ledger_size: int = Field(
        default=100, ge=1, le=100_000, description="Mismatches kept (the most recent)."
    )
    shadow_interval_s: PositiveSeconds = Field(
        default=2, description="How often the shadow sweep's leader schedules and compares."
    )
    shadow_lookback_s: PositiveSeconds = Field(
        default=600, description="Executions that finished longer ago are not shadowed."
    )
    scorecard_window_s: PositiveSeconds = Field(
        default=3600, description="The window of the scorecard metrics."
    )
    scorecard_refresh_s: PositiveSeconds = Field(
        default=30, description="How often the shadow sweep's leader refreshes those metrics."
    )

    # -- executions ----------------------------------------------------------------------------
    start_signal_timeout_s: PositiveSeconds = 300
    execution_max_depth: int = Field(default=100, ge=1, le=10_000)
    child_sweep_grace_s: PositiveSeconds = Field(
        default=10,
        description="A child left unstarted (or not stopped) by a crash is repaired once its "
        "parent has been over this long.",
    )
    terminal_row_wait_s: PositiveSeconds = Field(
        default=60,
        description="How long an event stream holds its terminal event until the row shows "
        "the ending (a writer that died in between is repaired by recovery).",
    )
    idempotency_key_ttl_s: float = Field(
        default=24 * 3600,
        gt=0,
        le=30 * 24 * 3600,
        description="How long an `Idempotency-Key` of a create answers with the execution it "
        "made (a retry after that creates a new one).",
    )

    # -- per-owner limits (twintrack.domain.limits) ---------------------------------------------
    max_executions_per_tree: int = Field(
        default=DEFAULT_MAX_EXECUTIONS_PER_TREE,
        ge=1,
        le=1_000_000,
        description="Members of one tree (root + descendants); an emit past it fails.",
    )
    max_running_executions_per_owner: int = Field(
        default=DEFAULT_MAX_RUNNING_EXECUTIONS_PER_OWNER,
        ge=1,
        le=1_000_000,
        description="An owner's queued, running or paused executions; a start past it: 429. "
        "Keep it below the cluster's worker slots (workers x DBOS_WORKER_CONCURRENCY, and x "
        "WORKER_CONCURRENCY on Kafka) so one owner's paused runs cannot hold them all.",
    )
    max_sse_streams_per_key: int = Field(
        default=DEFAULT_MAX_SSE_STREAMS_PER_KEY,
        ge=1,
        le=100_000,
        description="Event streams open at once per API key, per API process; more: 429.",
    )

    # -- workers and the Kafka track -----------------------------------------------------------
    worker_tracks: Annotated[list[Track], NoDecode] = Field(
        default_factory=lambda: [Track.KAFKA, Track.DBOS],
        description="Tracks a worker serves, comma-separated.",
    )
    worker_concurrency: int = Field(default=5, ge=1, le=1000)
    claim_ttl_s: PositiveSeconds = Field(
        default=6,
        description="Claim lease; renewed every third, so two missed renewals still hold it. "
        "Kill to re-run: the lease, a sweep, then redelivery: about 11 s on Kafka, 7 s on DBOS.",
    )
    max_attempts: int = Field(default=3, ge=1, le=100)
    recovery_sweep_interval_s: PositiveSeconds = 1
    db_retry_deadline_s: PositiveSeconds = Field(
        default=30,
        description="How long a worker retries a write through a database outage before it "
        "gives the run up to recovery (never reported as a flow failure).",
    )
    worker_shutdown_grace_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="On SIGTERM, how long runs may go on before they are handed over.",
    )
    dbos_repair_queued_s: PositiveSeconds = Field(
        default=30,
        description="A DBOS-track execution queued this long with no workflow is enqueued again.",
    )
    kafka_topic_prefix: str = Field(default="twintrack", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    kafka_partitions: int = Field(default=6, ge=1, le=1000)
    kafka_enable_idempotence: bool = Field(
        default=True, description="On for Apache Kafka; off for the embedded broker."
    )
    kafka_events_linger_ms: int = Field(default=5, ge=0, le=10_000)
    kafka_events_batch_size: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    kafka_fetch_max_wait_ms: int = Field(default=10, ge=1, le=10_000)
    kafka_session_timeout_ms: int = Field(default=6_000, ge=1000, le=300_000)
    broker_call_timeout_s: PositiveSeconds = Field(
        default=3,
        description="How long an API request waits on the broker before answering 503.",
    )
    kafka_events_retry_s: PositiveSeconds = Field(
        default=120,
        description="How long a worker re-sends an event the broker did not acknowledge "
        "(a stall, a partition) before the run gives up and recovery re-runs it.",
    )

    # -- events ------------------------------------------------------------------------------
    max_event_bytes: int = Field(
        default=1_000_000,
        ge=4096,
        le=64 * 1024 * 1024,
        description="Largest event (JSON-encoded) any events backend is asked to store. The "
        "default fits Kafka's default message.max.bytes (1 MiB) with room for the record's "
        "framing; raise it only with the broker's limit. It bounds DBOS streams rows too.",
    )

    # -- the DBOS track --------------------------------------------------------------------------
    dbos_app_name: str = "twintrack"
    dbos_system_database_url: str | None = Field(
        default=None, description="Defaults to DATABASE_URL (DBOS keeps its own schema)."
    )
    dbos_application_version: str = "twintrack-1"
    dbos_executor_id: str | None = Field(
        default=None, description="Unique, stable per worker; generated when unset."
    )
    dbos_queue_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="A global limit on running DBOS-track executions, across workers. Unset (the "
        "default), the bound is DBOS_WORKER_CONCURRENCY per worker, as on the Kafka track. Set, "
        "DBOS claims under REPEATABLE READ with FOR UPDATE NOWAIT so the count stays exact, and "
        "workers polling together conflict and retry: it costs throughput (docs/benchmarks.md).",
    )
    dbos_worker_concurrency: int = Field(default=5, ge=1, le=10_000)
    dbos_queue_polling_interval_s: PositiveSeconds = Field(
        default=0.5,
        description="Fallback DBOS queue poll: workers are woken by a NOTIFY on every change of "
        "the queue, so this only bounds a lost notification (and DBOS's contention back-off).",
    )
    dbos_admin_enabled: bool = Field(
        default=False,
        description="Serve DBOS's admin routes (health, workflows, steps, queues) on each "
        "DBOS-track worker. DBOS 3.4 ships no admin server, so twintrack serves the routes "
        "over DBOS's own calls (adapters/dbos/admin.py).",
    )
    dbos_admin_host: str = Field(
        default="127.0.0.1", description="Where the admin server listens (0.0.0.0: everywhere)."
    )
    dbos_admin_port: int = Field(default=3001, ge=1, le=65535, description="DBOS's usual port.")
    dbos_conductor_url: str | None = Field(
        default=None, description="A self-hosted DBOS Conductor's websocket URL (DBOS's own)."
    )
    dbos_conductor_key: SecretStr | None = Field(
        default=None, description="Connects DBOS-track workers to DBOS Conductor when set."
    )

    # -- processes ---------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    worker_metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve a worker's /metrics on this port."
    )
    console_secret: SecretStr | None = Field(
        default=None,
        description="Signs the console's session cookies; the same on every API process "
        "behind one address. Unset: a random secret per process (sessions end with it).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"
    #: the event loop of `twintrack api`, `worker` and `dev`: the standard library's, or uvloop
    #: (libuv: less CPU per request and per round trip in paired bench runs, but opt-in until a
    #: hang seen once in a full bench run with it is understood; docs/perf/README.md)
    event_loop: Literal["uvloop", "asyncio"] = "asyncio"

    @field_validator(
        "database_url",
        "kafka_bootstrap_servers",
        "dbos_rollout_percent",
        "dbos_system_database_url",
        "dbos_executor_id",
        "dbos_conductor_url",
        "dbos_conductor_key",
        "console_secret",
        "worker_metrics_port",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """`VAR=` (as compose and k8s write a cleared variable) means unset, not invalid."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("worker_tracks", mode="before")
    @classmethod
    def _split_tracks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("worker_tracks")
    @classmethod
    def _some_track(cls, value: list[Track]) -> list[Track]:
        if not value:
            raise ValueError("name at least one of: kafka, dbos")
        return list(dict.fromkeys(value))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _combinations(self) -> Settings:
        problems = []
        if self.execution_events_backend is EventsBackend.DBOS and not self.dbos_can_receive:
            problems.append(
                "EXECUTION_EVENTS_BACKEND=dbos, but no execution can go to the DBOS track: "
                "set ENABLE_DBOS_EXECUTION=true or DBOS_ROLLOUT_PERCENT above 0, "
                "or use EXECUTION_EVENTS_BACKEND=kafka"
            )
        if (
            self.dbos_queue_concurrency is not None
            and self.dbos_worker_concurrency > self.dbos_queue_concurrency
        ):
            problems.append(
                f"DBOS_WORKER_CONCURRENCY={self.dbos_worker_concurrency} exceeds "
                f"DBOS_QUEUE_CONCURRENCY={self.dbos_queue_concurrency}"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def dbos_can_receive(self) -> bool:
        """Whether any new execution can be routed to DBOS under these settings."""
        if self.dbos_rollout_percent is not None:
            return self.dbos_rollout_percent > 0
        return self.enable_dbos_execution


def _describe(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error.get("loc", ())]
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if not loc:
        return message
    value = error.get("input")
    shown = f" (got {value!r})" if isinstance(value, str | int | float | bool) else ""
    return f"{loc[0].upper()}: {message}{shown}"


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and `.env`), or ConfigError with every problem named."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_describe(dict(e)) for e in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from exc
