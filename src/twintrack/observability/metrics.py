"""The process's Prometheus registry and the metrics workers record, all labelled by track.

The API's HTTP metrics live in `entrypoints/api/metrics.py` on this same registry, so
`twintrack dev`
(API and worker in one process) shows both at `/metrics`; a standalone worker serves them
on WORKER_METRICS_PORT when set.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

REGISTRY = CollectorRegistry(auto_describe=True)

EXECUTIONS_FINISHED = Counter(
    "twintrack_executions_finished",
    "Executions a worker ran to an end, by final status.",
    ["track", "status"],
    registry=REGISTRY,
)
EXECUTION_SECONDS = Histogram(
    "twintrack_execution_seconds",
    "Time a worker spent running one execution attempt.",
    ["track"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
EXECUTIONS_RUNNING = Gauge(
    "twintrack_executions_running",
    "Executions this process is running now.",
    ["track"],
    registry=REGISTRY,
)
CLAIMS = Counter(
    "twintrack_claims",
    "Executions a worker took (claimed) to run.",
    ["track"],
    registry=REGISTRY,
)
LEASES_LOST = Counter(
    "twintrack_leases_lost",
    "Runs abandoned because the worker lost its lease (it stopped writing at once).",
    ["track"],
    registry=REGISTRY,
)
RECOVERIES = Counter(
    "twintrack_recoveries",
    "Executions the sweeper recovered, by reason (expired_claim, max_attempts, ...).",
    ["track", "reason"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "twintrack_dead_letters",
    "Task messages sent to the dead-letter topic (unparseable, unknown execution).",
    ["track"],
    registry=REGISTRY,
)

GUARD_VERDICTS = Counter(
    "twintrack_rollout_guard_verdicts",
    "Verdicts of the rollout guard (pass, fail, inconclusive) on the track it guards (dbos).",
    ["track", "verdict"],
    registry=REGISTRY,
)
GUARD_ROLLBACKS = Counter(
    "twintrack_rollout_guard_rollbacks",
    "Times the rollout guard sent the new admissions of a track (dbos) back to Kafka.",
    ["track"],
    registry=REGISTRY,
)

SHADOW_RUNS = Counter(
    "twintrack_shadow_runs",
    "Shadow runs compared with their original, by the shadow's track and result "
    "(matched, mismatched).",
    ["track", "result"],
    registry=REGISTRY,
)
SHADOW_SKIPPED = Counter(
    "twintrack_shadow_skipped",
    "Sampled executions that got no shadow run: shed (limit: SHADOW_MAX_RUNNING reached; busy: "
    "the target track had more than SHADOW_SHED_QUEUED queued).",
    ["track", "reason"],
    registry=REGISTRY,
)
SCORECARD = Gauge(
    "twintrack_rollout_scorecard",
    "The rollout scorecard over SCORECARD_WINDOW_S (core/scorecard.py), refreshed by the "
    "leading worker every SCORECARD_REFRESH_S: one series per track, cohort and figure "
    "(executions, error_rate, consistency_rate, p50_s, p99_s, queue_p50_s, queue_p99_s, "
    "recoveries, shadow_runs).",
    ["track", "cohort", "figure"],
    registry=REGISTRY,
)
ADMISSION_REFUSALS = Counter(
    "twintrack_admission_refusals",
    "Executions routed to a track (dbos) whose admission failed, by cause and by what became "
    "of them: `fallback` (created on Kafka, DBOS_FALLBACK_TO_KAFKA) or `refused` (a 503).",
    ["track", "cause", "outcome"],
    registry=REGISTRY,
)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type, for any process that serves metrics."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Expose the registry over HTTP from a background thread (standalone workers)."""
    start_http_server(port, addr=host, registry=REGISTRY)
