"""What a benchmark run measures, and with which settings.

A *mode* is one column of the results table: the settings that pick the execution track and the
events backend. Every measurement runs once per mode on a deployment of its own (fresh database,
fresh topics), so modes never see each other's executions. Adding the DBOS track's two modes is
one line each in `MODES` once the factory builds that track.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mode:
    name: str
    env: Mapping[str, str]
    #: where its executions must land (checked on every deployment: no silent fallback)
    track: str
    events_backend: str


def _mode(name: str, track: str, events_backend: str) -> Mode:
    env = {
        "ENABLE_DBOS_EXECUTION": str(track == "dbos").lower(),
        "EXECUTION_EVENTS_BACKEND": events_backend,
    }
    return Mode(name, env, track, events_backend)


KAFKA = _mode("kafka", "kafka", "kafka")
DBOS_KAFKA_EVENTS = _mode("dbos+kafka events", "dbos", "kafka")
DBOS_STREAMS = _mode("dbos+dbos streams", "dbos", "dbos")
#: Every mode `--modes` accepts, side by side in one table.
MODES: tuple[Mode, ...] = (KAFKA, DBOS_KAFKA_EVENTS, DBOS_STREAMS)
#: What a plain `python -m bench` runs: all three.
DEFAULT_MODES: tuple[str, ...] = tuple(m.name for m in MODES)


@dataclass(frozen=True)
class Sizes:
    """Sample sizes; `QUICK` is a smoke test (under a minute), `FULL` the reported run."""

    warmup: int = 20
    latency_runs: int = 200
    throughput_s: float = 20.0
    throughput_clients: int = 32
    drain_timeout_s: float = 60.0
    event_runs: int = 5
    chain_length: int = 50
    command_runs: int = 50
    children: int = 100
    children_runs: int = 3
    #: max_concurrency of the parent: None is the default (8), 100 lets every emit run at once
    children_concurrency: tuple[int | None, ...] = (None, 100)
    recovery_runs: int = 3
    idle_s: float = 3.0
    #: the physical bound: seconds of one-row INSERT commits per client count
    bound_s: float = 8.0
    bound_clients: tuple[int, ...] = (4, 16)
    # Recovery at the service defaults (what users get; about 18 s per sample at a 15 s claim
    # TTL); quick runs only a fast setting. Other settings: `--set CLAIM_TTL_S=6 --only recovery`.
    recovery_variants: tuple[Mapping[str, str], ...] = field(default_factory=lambda: ({},))


FULL = Sizes()
QUICK = Sizes(
    warmup=5,
    latency_runs=30,
    throughput_s=5.0,
    throughput_clients=16,
    drain_timeout_s=20.0,
    event_runs=2,
    command_runs=10,
    children_runs=1,
    recovery_runs=1,
    idle_s=3.0,
    children_concurrency=(None,),
    bound_s=3.0,
    recovery_variants=(
        {"CLAIM_TTL_S": "6", "RECOVERY_SWEEP_INTERVAL_S": "2", "KAFKA_SESSION_TIMEOUT_MS": "6000"},
    ),
)

#: Worker processes of a deployment (DESIGN §4: "2 worker processes").
WORKER_PROCESSES = 2

#: The two deployment shapes: API in the bench process + `WORKER_PROCESSES` `twintrack worker`
#: processes, and one `twintrack dev` process (API and worker in one, as users first run it).
SPLIT, DEV = "split", "dev"
SHAPES: tuple[str, ...] = (SPLIT, DEV)
#: What the dev shape measures (the split shape measures everything).
DEV_MEASURES: tuple[str, ...] = ("latency", "throughput")

#: Settings every deployment gets on top of the service's defaults. Anything not named here is
#: the default a production deployment would have (README "Configuration").
DEPLOYMENT_ENV: Mapping[str, str] = {
    # The same slots per worker on both tracks (DBOS_WORKER_CONCURRENCY defaults to 5).
    "WORKER_CONCURRENCY": "20",
    "DBOS_WORKER_CONCURRENCY": "20",
    # The bench is one owner measuring throughput, not the per-owner limit: its 100-child
    # fan-outs and 32 clients (and the soak's backlog after a stall) must never meet a 429.
    "MAX_RUNNING_EXECUTIONS_PER_OWNER": "1000",
    "LOG_LEVEL": "WARNING",
}


@dataclass(frozen=True)
class SoakSizes:
    """The chaos soak (`--only soak`): load, faults and deadlines, per mode.

    The load is `executions` runs of `const → tally → delay(delay_ms) → output` (one flow each,
    so each has a counter of its own), started at up to `rate` per second with at most `clients`
    in flight. Over that window: a worker SIGKILLed every `kill_every_s` (at most `max_kills`,
    None: no cap) and replaced, PostgreSQL restarted at a third (down `pg_down_s`), the broker
    stalled for `stall_s` at two thirds. Then `drain_s` for every execution to end.
    """

    executions: int = 1000
    clients: int = 32
    rate: float = 25.0
    delay_ms: int = 1000
    kill_every_s: float = 5.0
    max_kills: int | None = None
    pg_down_s: float = 3.0
    stall_s: float = 20.0
    drain_s: float = 180.0
    #: how long one client follows one execution live before leaving it to the final check
    follow_s: float = 90.0
    #: on top of the deployment's: recovery as in the recovery measurement's fastest setting,
    #: attempts enough that repeated kills of one execution do not exhaust them, and JSON logs
    #: as in production (the console renderer formats each traceback with rich, seconds of
    #: event-loop time per error: during an outage it froze the API for minutes)
    settings: Mapping[str, str] = field(
        default_factory=lambda: {
            "CLAIM_TTL_S": "6",
            "RECOVERY_SWEEP_INTERVAL_S": "2",
            "MAX_ATTEMPTS": "10",
            "LOG_FORMAT": "json",
        }
    )


SOAK = SoakSizes()
QUICK_SOAK = SoakSizes(executions=100, rate=20.0, kill_every_s=3.0, stall_s=5.0, drain_s=90.0)
