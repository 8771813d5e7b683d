"""The rollout scorecard: per track and cohort, how the executions of a window fared.

LaunchDarkly's migration metrics, for two backends: for the executions that finished in the window
(shadow runs excluded: they are counted on their original's side) — how many, the error rate
(failed / completed + failed), the consistency rate (shadow runs that matched / shadow runs
compared), p50/p99 of create→completed and of the queue wait (queued→started), and recoveries
(audit rows of core/audit.py, reroutes and a worker's own failed runs left out).

A **cohort** is how the row came to be on its track: `routed` (the rollout in force at its
creation chose the track), `rerouted` (a reroute moved it there: it has a `rerouted` audit
row) or `fallback` (routed to DBOS, created on Kafka because DBOS could not admit it: its
`fallback_reason`); each track also has an `all` row. The figures come from a store as one
sample per execution and are computed here, so the Postgres and memory stores share every rule.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from twintrack.core.recovery_ports import Reason
from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.observability.metrics import SCORECARD

ROUTED = "routed"
REROUTED = "rerouted"
FALLBACK = "fallback"
ALL = "all"
COHORTS = (ROUTED, REROUTED, FALLBACK)
#: audit reasons that are not a recovery: a reroute is a move, the others a worker's own note
NOT_RECOVERIES = frozenset({Reason.REROUTED, Reason.RUN_FAILED, Reason.HANDOVER})
MATCHED = "matched"
MISMATCHED = "mismatched"

_S = ExecutionStatus

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_window(text: str) -> float:
    """`90s`, `30m`, `1h`, `2d` (or plain seconds) as seconds; ValueError otherwise."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:])
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(f"not a window: {text!r} (use 90s, 30m, 1h, 2d)") from None
    if not 0 < seconds <= 30 * 86_400:
        raise ValueError(f"the window must be over 0 and at most 30d, got {text!r}")
    return seconds


@dataclass(frozen=True)
class ExecutionSample:
    """One execution of the window, as the scorecard needs it."""

    track: Track
    cohort: str
    status: ExecutionStatus
    #: created→finished, for a completed one
    total_s: float | None = None
    #: queued→started (the queue wait), once started
    queue_s: float | None = None
    recoveries: int = 0
    #: how its shadow run compared: matched, mismatched, or None (none compared)
    shadow: str | None = None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (Postgres's percentile_disc); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True)
class CohortScore:
    track: Track
    cohort: str
    executions: int
    completed: int
    failed: int
    shadow_runs: int
    shadow_matches: int
    p50_s: float | None
    p99_s: float | None
    queue_p50_s: float | None
    queue_p99_s: float | None
    recoveries: int

    @property
    def error_rate(self) -> float | None:
        finished = self.completed + self.failed
        return self.failed / finished if finished else None

    @property
    def consistency_rate(self) -> float | None:
        return self.shadow_matches / self.shadow_runs if self.shadow_runs else None

    def figures(self) -> dict[str, float | None]:
        """The numbers exported as metrics (`figure` label)."""
        return {
            "executions": self.executions,
            "error_rate": self.error_rate,
            "consistency_rate": self.consistency_rate,
            "shadow_runs": self.shadow_runs,
            "p50_s": self.p50_s,
            "p99_s": self.p99_s,
            "queue_p50_s": self.queue_p50_s,
            "queue_p99_s": self.queue_p99_s,
            "recoveries": self.recoveries,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "track": self.track.value,
            "cohort": self.cohort,
            "completed": self.completed,
            "failed": self.failed,
            "shadow_matches": self.shadow_matches,
            **self.figures(),
        }


@dataclass(frozen=True)
class Scorecard:
    window_s: float
    generated_at: datetime
    rows: list[CohortScore]

    def row(self, track: Track, cohort: str = ALL) -> CohortScore:
        return next(r for r in self.rows if r.track is track and r.cohort == cohort)

    def to_json(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "generated_at": self.generated_at.isoformat(),
            "rows": [r.to_json() for r in self.rows],
        }


def _score(track: Track, cohort: str, samples: Sequence[ExecutionSample]) -> CohortScore:
    totals = [s.total_s for s in samples if s.status is _S.COMPLETED and s.total_s is not None]
    waits = [s.queue_s for s in samples if s.queue_s is not None]
    compared = [s for s in samples if s.shadow in (MATCHED, MISMATCHED)]
    return CohortScore(
        track=track,
        cohort=cohort,
        executions=len(samples),
        completed=sum(1 for s in samples if s.status is _S.COMPLETED),
        failed=sum(1 for s in samples if s.status is _S.FAILED),
        shadow_runs=len(compared),
        shadow_matches=sum(1 for s in compared if s.shadow == MATCHED),
        p50_s=percentile(totals, 0.5),
        p99_s=percentile(totals, 0.99),
        queue_p50_s=percentile(waits, 0.5),
        queue_p99_s=percentile(waits, 0.99),
        recoveries=sum(s.recoveries for s in samples),
    )


def score(samples: Iterable[ExecutionSample], *, window_s: float, now: datetime) -> Scorecard:
    """Every track's `all` row and each cohort's, even when empty (pure)."""
    samples = list(samples)
    rows: list[CohortScore] = []
    for track in Track:
        mine = [s for s in samples if s.track is track]
        rows.append(_score(track, ALL, mine))
        rows.extend(_score(track, c, [s for s in mine if s.cohort == c]) for c in COHORTS)
    return Scorecard(window_s=window_s, generated_at=now, rows=rows)


class ScorecardStore(Protocol):
    """One sample per real execution that finished in the window (adapters/postgres/...)."""

    async def samples(self, window_s: float) -> tuple[datetime, list[ExecutionSample]]:
        """(the store's clock now, the samples)."""
        ...


async def scorecard(store: ScorecardStore, window_s: float) -> Scorecard:
    now, samples = await store.samples(window_s)
    return score(samples, window_s=window_s, now=now)


def publish(card: Scorecard) -> None:
    """Set the `twintrack_rollout_scorecard` gauges (a figure without a value reads NaN)."""
    for row in card.rows:
        for figure, value in row.figures().items():
            SCORECARD.labels(track=row.track.value, cohort=row.cohort, figure=figure).set(
                math.nan if value is None else value
            )


class ScorecardRefresh:
    """Refreshes the gauges from the leading worker, at most every `refresh_s` (a sweep); a
    worker that stops leading withdraws them, so only the leader's series exist."""

    def __init__(
        self,
        store: ScorecardStore,
        *,
        window_s: float,
        refresh_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.window_s = window_s
        self.refresh_s = refresh_s
        self.clock = clock
        self._last: float | None = None

    async def sweep(self) -> Scorecard | None:
        now = self.clock()
        if self._last is not None and now - self._last < self.refresh_s:
            return None
        self._last = now
        card = await scorecard(self.store, self.window_s)
        publish(card)
        return card

    def withdraw(self) -> None:
        """This process no longer leads: its figures would go stale, so drop them."""
        SCORECARD.clear()
        self._last = None
