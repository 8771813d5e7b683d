"""The scorecard's maths (core/scorecard.py) and its samples over the memory adapters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.unit.core.support import new_flow
from tests.unit.core.test_shadow import TALLY, completed, run_shadow, set_percent, shadowing
from twintrack.bootstrap import shadow_sweep
from twintrack.core.scorecard import (
    ALL,
    FALLBACK,
    REROUTED,
    ROUTED,
    ExecutionSample,
    ScorecardRefresh,
    parse_window,
    percentile,
    score,
    scorecard,
)
from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.observability.metrics import REGISTRY

_S = ExecutionStatus
NOW = datetime(2026, 12, 2, tzinfo=UTC)


def test_rates_and_percentiles_per_track_and_cohort() -> None:
    samples = [
        *(ExecutionSample(Track.DBOS, ROUTED, _S.COMPLETED, float(s), 0.1) for s in range(1, 11)),
        ExecutionSample(Track.DBOS, ROUTED, _S.FAILED, None, 0.3, recoveries=2),
        ExecutionSample(Track.DBOS, REROUTED, _S.COMPLETED, 5.0, 1.0, shadow="matched"),
        ExecutionSample(Track.DBOS, REROUTED, _S.COMPLETED, 5.0, 1.0, shadow="mismatched"),
        ExecutionSample(Track.DBOS, REROUTED, _S.STOPPED, None, None),
        ExecutionSample(Track.KAFKA, FALLBACK, _S.COMPLETED, 2.0, 0.1),
    ]
    card = score(samples, window_s=3600, now=NOW)
    assert {(r.track, r.cohort) for r in card.rows} == {
        (t, c) for t in Track for c in (ALL, ROUTED, REROUTED, FALLBACK)
    }
    assert card.row(Track.KAFKA, FALLBACK).executions == 1
    routed = card.row(Track.DBOS, ROUTED)
    assert (routed.executions, routed.completed, routed.failed) == (11, 10, 1)
    assert routed.error_rate == pytest.approx(1 / 11)
    assert (routed.p50_s, routed.p99_s) == (5.0, 10.0)
    assert routed.recoveries == 2
    assert routed.consistency_rate is None  # no shadow compared
    rerouted = card.row(Track.DBOS, REROUTED)
    assert (rerouted.shadow_runs, rerouted.consistency_rate) == (2, 0.5)
    assert rerouted.error_rate == 0.0  # a stop is not an error
    everything = card.row(Track.DBOS)
    assert everything.executions == 14
    assert everything.queue_p99_s == 1.0
    empty = card.row(Track.KAFKA, ROUTED)
    assert (empty.executions, empty.error_rate, empty.p50_s) == (0, None, None)
    assert card.to_json()["rows"][0]["track"] == "kafka"


def test_percentile_is_nearest_rank_and_windows_parse() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert [parse_window(w) for w in ("90s", "30m", "1h", "2d", "45")] == [
        90,
        1800,
        3600,
        172_800,
        45,
    ]
    for bad in ("", "h", "-1h", "31d", "soon", "nan"):
        with pytest.raises(ValueError, match="window"):
            parse_window(bad)


async def test_the_memory_store_counts_executions_and_their_shadows() -> None:
    app = shadowing()
    ex = await completed(app, await new_flow(app, TALLY))
    await set_percent(app, 100)
    sweep = shadow_sweep(app.settings, app)
    await sweep.sweep()
    await run_shadow(app, ex)
    await sweep.sweep()
    card = await scorecard(app.scorecard_store, 3600)
    kafka = card.row(Track.KAFKA, ROUTED)
    assert (kafka.executions, kafka.completed, kafka.shadow_runs, kafka.consistency_rate) == (
        1,
        1,
        1,
        1.0,
    )
    assert card.row(Track.DBOS).executions == 0  # the shadow is not counted as an execution


async def test_the_gauges_are_published_and_withdrawn_with_the_lead() -> None:
    app = shadowing()
    await completed(app, await new_flow(app, TALLY))
    now = [0.0]
    refresh = ScorecardRefresh(
        app.scorecard_store, window_s=3600, refresh_s=30, clock=lambda: now[0]
    )
    assert await refresh.sweep() is not None
    assert await refresh.sweep() is None  # not again within SCORECARD_REFRESH_S
    labels = {"track": "kafka", "cohort": "routed", "figure": "executions"}
    assert REGISTRY.get_sample_value("twintrack_rollout_scorecard", labels) == 1.0
    refresh.withdraw()
    assert REGISTRY.get_sample_value("twintrack_rollout_scorecard", labels) is None
    assert await refresh.sweep() is not None  # a new lead publishes at once
