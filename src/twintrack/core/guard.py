"""The rollout guard: one leader-elected controller that rolls the DBOS cohort back on its own.

A growing DBOS cohort used to be watched by nobody. Each round (on the Sweeper loop, one leader
per cluster) the guard compares the DBOS cohort with the Kafka cohort over the same sliding
window — error rate, p99 create→completed, stuck executions, shadow mismatches (every shadow
run pairs a DBOS run with a Kafka one: a mismatch counts against the DBOS cohort) — and records
a verdict with its figures (Argo Rollouts / Flagger analysis):

* `inconclusive` — within the initial delay after the rollout last changed, or fewer than
  GUARD_MIN_SAMPLES finished DBOS executions in the window: hold (never promote, never roll
  back); the failure count neither grows nor resets.
* `fail` — a threshold is crossed; after GUARD_FAILURES_TO_ROLLBACK failed rounds in a row (for
  the same rollout version) new admissions go back to Kafka: percent 0, recorded in the rollout
  history by "guard" with the reason. Running work is never moved; with GUARD_REROUTE_UNSTARTED
  not-yet-started DBOS work is rerouted (core/rollout.reroute) too. The rollback is conditional
  on the rollout version the verdict judged (compare-and-set): if an operator changed the
  rollout meanwhile, their newer state stands and the verdict records that it was superseded.
* `pass` — within every threshold; resets the failure count.

While DBOS receives no new executions there is nothing to guard and no verdict is recorded.
The Kafka cohort is the baseline when it has GUARD_MIN_SAMPLES itself; otherwise (a 100 % DBOS
rollout) the thresholds apply to the DBOS figures alone. An execution routed to DBOS that fell
back to Kafka at admission (DBOS_FALLBACK_TO_KAFKA) counts as a failed DBOS sample: DBOS could
not take it, whatever then happened to it on Kafka. It is never a Kafka sample (the stores
leave it out of the Kafka figures): counted there too, a DBOS outage would raise the baseline
it is judged against.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

import structlog

from twintrack.core.live_rollout import (
    RolloutChange,
    RolloutStateStore,
    RolloutSuperseded,
    set_rollout,
)
from twintrack.core.shadow import ShadowOutcomes, ShadowStore
from twintrack.domain.execution import Track
from twintrack.observability.metrics import GUARD_ROLLBACKS, GUARD_VERDICTS

log = structlog.get_logger()

GUARD = "guard"


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class CohortFigures:
    """One track's executions that finished in the window (and those stuck now)."""

    track: Track
    #: completed + failed (a stop is an operator's choice, not an outcome of the track)
    finished: int
    failed: int
    #: p99 of created→finished over the completed ones; None when none completed
    p99_s: float | None
    #: unfinished and started (queued or later) longer than GUARD_STUCK_AFTER_S ago
    stuck: int
    #: (DBOS only) created in the window on Kafka because DBOS admission failed; they are in
    #: no track's other figures (the Kafka ones included)
    fallbacks: int = 0

    @property
    def samples(self) -> int:
        """Outcomes judged: finished executions, and admissions the track refused."""
        return self.finished + self.fallbacks

    @property
    def error_rate(self) -> float | None:
        return (self.failed + self.fallbacks) / self.samples if self.samples else None

    def to_json(self) -> dict[str, Any]:
        return {
            "finished": self.finished,
            "failed": self.failed,
            "fallbacks": self.fallbacks,
            "error_rate": self.error_rate,
            "p99_s": self.p99_s,
            "stuck": self.stuck,
        }


@dataclass(frozen=True)
class WindowFigures:
    #: the store's clock (the database's), which also dated the rollout change
    now: datetime
    cohorts: dict[Track, CohortFigures]


@dataclass(frozen=True)
class GuardVerdict:
    verdict: Verdict
    reason: str
    consecutive_failures: int
    rolled_back: bool
    figures: dict[str, Any] = field(default_factory=dict)
    decided_at: datetime | None = None

    @property
    def rollout_version(self) -> int | None:
        version = self.figures.get("rollout_version")
        return version if isinstance(version, int) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "consecutive_failures": self.consecutive_failures,
            "rolled_back": self.rolled_back,
            "figures": self.figures,
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
        }


class GuardStore(Protocol):
    """The figures the guard judges on, and its verdicts (adapters/postgres/guard.py)."""

    async def figures(self, *, window_s: float, stuck_after_s: float) -> WindowFigures: ...

    async def record(self, verdict: GuardVerdict) -> GuardVerdict: ...

    async def recent(self, limit: int = 20) -> list[GuardVerdict]:
        """The latest verdicts, newest first."""
        ...


@dataclass(frozen=True)
class GuardPolicy:
    """The guard's settings (GUARD_* in config.py)."""

    window_s: float = 300.0
    initial_delay_s: float = 60.0
    min_samples: int = 20
    #: DBOS error rate minus the Kafka one (or alone, without a baseline)
    max_error_rate_delta: float = 0.05
    #: DBOS p99 over the Kafka p99
    max_p99_ratio: float = 2.0
    stuck_after_s: float = 300.0
    #: DBOS stuck executions tolerated beyond Kafka's
    max_stuck: int = 0
    failures_to_rollback: int = 2
    reroute_unstarted: bool = False
    #: shadow mismatches / shadow runs compared in the window
    max_mismatch_rate: float = 0.01
    #: shadow runs compared in the window before their mismatch rate is judged
    min_shadow_samples: int = 5


def judge(
    dbos: CohortFigures,
    kafka: CohortFigures,
    policy: GuardPolicy,
    shadow: ShadowOutcomes | None = None,
) -> tuple[Verdict, str]:
    """The verdict on one window's figures, and why (pure)."""
    baseline = kafka.samples >= policy.min_samples
    stuck_over = dbos.stuck - (kafka.stuck if baseline else 0)
    if stuck_over > policy.max_stuck:
        return Verdict.FAIL, (
            f"{dbos.stuck} DBOS executions stuck over {policy.stuck_after_s:g}s "
            f"(Kafka: {kafka.stuck}; GUARD_MAX_STUCK={policy.max_stuck})"
        )
    rate = shadow.mismatch_rate if shadow is not None else None
    if (
        shadow is not None
        and rate is not None
        and shadow.compared >= policy.min_shadow_samples
        and rate > policy.max_mismatch_rate
    ):
        return Verdict.FAIL, (
            f"{shadow.mismatched} of {shadow.compared} shadow runs differ ({rate:.1%}): over "
            f"GUARD_MAX_MISMATCH_RATE={policy.max_mismatch_rate:g}"
        )
    if dbos.samples < policy.min_samples:
        return Verdict.INCONCLUSIVE, (
            f"too few samples: {dbos.samples} finished DBOS executions (and fallbacks) in the "
            f"window, GUARD_MIN_SAMPLES={policy.min_samples}"
        )
    dbos_rate = dbos.error_rate or 0.0
    kafka_rate = (kafka.error_rate or 0.0) if baseline else 0.0
    if dbos_rate - kafka_rate > policy.max_error_rate_delta:
        return Verdict.FAIL, (
            f"DBOS error rate {dbos_rate:.1%} vs Kafka {kafka_rate:.1%}"
            f"{'' if baseline else ' (no Kafka baseline)'}: over "
            f"GUARD_MAX_ERROR_RATE_DELTA={policy.max_error_rate_delta:g}"
        )
    if baseline and dbos.p99_s is not None and kafka.p99_s is not None and kafka.p99_s > 0:
        ratio = dbos.p99_s / kafka.p99_s
        if ratio > policy.max_p99_ratio:
            return Verdict.FAIL, (
                f"DBOS p99 {dbos.p99_s:.3f}s is {ratio:.1f}x Kafka's {kafka.p99_s:.3f}s: over "
                f"GUARD_MAX_P99_RATIO={policy.max_p99_ratio:g}"
            )
    return Verdict.PASS, "within every threshold"


class Guard:
    """One round per `check`: judge, record, and roll back after enough failures in a row."""

    def __init__(
        self,
        *,
        store: GuardStore,
        rollout: RolloutStateStore,
        policy: GuardPolicy,
        reroute: Callable[[], Awaitable[object]] | None = None,
        shadows: ShadowStore | None = None,
    ) -> None:
        self.shadows = shadows
        self.store = store
        self.rollout = rollout
        self.policy = policy
        self.reroute = reroute

    async def check(self) -> GuardVerdict | None:
        """This round's verdict (recorded), or None when DBOS receives nothing to guard."""
        p = self.policy
        state = await self.rollout.load()
        if state is None or state.switches.dbos_share == 0:
            return None
        window = await self.store.figures(window_s=p.window_s, stuck_after_s=p.stuck_after_s)
        dbos, kafka = window.cohorts[Track.DBOS], window.cohorts[Track.KAFKA]
        shadow = await self.shadows.outcomes(p.window_s) if self.shadows else ShadowOutcomes()
        since_change = (window.now - state.changed_at).total_seconds()
        if since_change < p.initial_delay_s:
            verdict, reason = (
                Verdict.INCONCLUSIVE,
                (
                    f"initial delay: the rollout changed {since_change:.0f}s ago, "
                    f"GUARD_INITIAL_DELAY_S={p.initial_delay_s:g}"
                ),
            )
        else:
            verdict, reason = judge(dbos, kafka, p, shadow)
        last = await self.store.recent(1)
        previous = (
            last[0].consecutive_failures if last and last[0].rollout_version == state.version else 0
        )
        failures = {Verdict.PASS: 0, Verdict.FAIL: previous + 1}.get(verdict, previous)
        figures: dict[str, Any] = {
            "rollout_version": state.version,
            "dbos_share": state.switches.dbos_share,
            "window_s": p.window_s,
            "since_change_s": round(since_change, 3),
            "dbos": dbos.to_json(),
            "kafka": kafka.to_json(),
            "shadow": {
                "compared": shadow.compared,
                "mismatched": shadow.mismatched,
                "mismatch_rate": shadow.mismatch_rate,
            },
        }
        rolled_back = verdict is Verdict.FAIL and failures >= p.failures_to_rollback
        if rolled_back:
            rolled_back, reason = await self._roll_back(state.version, reason, failures, figures)
        recorded = await self.store.record(
            GuardVerdict(verdict, reason, failures, rolled_back, figures)
        )
        GUARD_VERDICTS.labels(track=Track.DBOS.value, verdict=verdict.value).inc()
        if rolled_back and p.reroute_unstarted and self.reroute is not None:
            try:
                await self.reroute()
            except Exception:
                log.exception("guard could not reroute unstarted DBOS executions")
        return recorded

    async def _roll_back(
        self, version: int, reason: str, failures: int, figures: dict[str, Any]
    ) -> tuple[bool, str]:
        """Percent 0, only over the version judged: (rolled back, the verdict's reason)."""
        why = f"guard: {reason} ({failures} failed checks in a row)"
        try:
            await set_rollout(
                self.rollout,
                RolloutChange(rollout_percent=0),
                changed_by=GUARD,
                reason=why,
                expected_version=version,
            )
        except RolloutSuperseded as exc:
            # An operator changed the rollout after this window was read: their state was not
            # judged, so it is not undone; the next rounds judge it (after the initial delay).
            current = exc.current
            figures["superseded_by"] = current.version
            log.warning(
                "rollout guard did not roll back: the rollout changed since its verdict",
                judged=version,
                current=current.version,
                by=current.changed_by,
            )
            return False, (
                f"{reason}; not rolled back: the rollout changed to v{current.version} "
                f"(by {current.changed_by}) after v{version} was judged"
            )
        GUARD_ROLLBACKS.labels(track=Track.DBOS.value).inc()
        log.warning("rollout guard rolled new admissions back to kafka", reason=why)
        return True, reason
