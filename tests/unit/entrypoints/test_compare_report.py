"""The comparison verdict (tooling/compare_report.py) and `twintrack compare`'s table, from
synthetic runs (no servers)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from twintrack.domain.comparison import Ordering
from twintrack.entrypoints.cli.compare import render_report
from twintrack.tooling.compare_report import RunResult, build_report, percentile

T0 = "2026-11-21T10:00:00.000000Z"


def ts(ms: int) -> str:
    return f"2026-11-21T10:00:00.{ms * 1000:06d}Z"


def _events(track: str, order: list[str], *, start_ms: int = 5, end_ms: int = 20) -> list[Any]:
    """A plausible stream: created, queued, started, one completion per node, completed."""
    events: list[dict[str, Any]] = [
        {"type": "execution.created", "timestamp": T0, "data": {"track": track}},
        {"type": "execution.queued", "timestamp": ts(1), "data": {"track": track}},
        {"type": "execution.started", "timestamp": ts(start_ms), "data": {"worker_id": track}},
    ]
    for node in order:
        data = {"node_id": node, "duration_ms": 0.3 if track == "kafka" else 0.9}
        events.append({"type": "node.completed", "timestamp": ts(start_ms + 1), "data": data})
    events.append({"type": "execution.completed", "timestamp": ts(end_ms), "data": {}})
    for index, event in enumerate(events):
        event.update(index=index, execution_id=f"ex_{track}")
    return events


def _run(track: str, run: int, order: list[str], outputs: Any = None, **kw: Any) -> RunResult:
    return RunResult(
        track=track,
        run=run,
        execution_id=f"ex_{track}_{run}",
        status=kw.pop("status", "completed"),
        outputs={"r": 1} if outputs is None else outputs,
        events=_events(track, order, **kw),
    )


def _render(report: Any) -> str:
    console = Console(record=True, width=140)
    render_report(report, console)
    return console.export_text()


def test_identical_runs_match_and_track_specific_fields_are_masked() -> None:
    results = [_run(t, i, ["a", "b"]) for i in range(3) for t in ("kafka", "dbos")]
    report = build_report(results, 3)
    assert report.ok
    assert report.summaries["kafka"].variants == report.summaries["dbos"].variants == 1
    text = _render(report)
    assert "MATCH: both tracks agree on all 3 run(s)" in text
    assert "5.0 / 5.0 ms" in text  # create→start p50 / p95
    assert "15.0 / 15.0 ms" in text  # start→end


def test_an_order_the_control_also_produced_is_noise_not_a_difference() -> None:
    results = [
        _run("kafka", 0, ["a", "b"]),
        _run("kafka", 1, ["b", "a"]),
        _run("dbos", 0, ["b", "a"]),
        _run("dbos", 1, ["b", "a"]),
    ]
    report = build_report(results, 2, Ordering.STRICT)
    assert report.ok, report.stream_diff
    assert report.summaries["kafka"].variants == 2


def test_per_node_ordering_ignores_how_concurrent_nodes_interleave() -> None:
    results = [_run("kafka", 0, ["a", "b"]), _run("dbos", 0, ["b", "a"])]
    assert build_report(results, 1).ok  # the default: per node
    strict = build_report(results, 1, Ordering.STRICT)
    assert strict.stream_mismatches == [0]


def test_a_stream_the_control_never_produced_is_a_mismatch_with_a_readable_diff() -> None:
    results = [_run("kafka", 0, ["a", "b"]), _run("dbos", 0, ["a", "c"])]
    report = build_report(results, 1)
    assert not report.ok
    assert report.stream_mismatches == [0]
    assert "--- kafka run 1" in report.stream_diff
    assert "+++ dbos run 1" in report.stream_diff
    assert '-[node b] node.completed {"duration_ms": "<duration>", "node_id": "b"}' in (
        report.stream_diff
    )
    text = _render(report)
    assert "MISMATCH: event stream" in text
    assert "DIFFERENT in 1 run(s)" in text


def test_statuses_and_outputs_are_compared_as_multisets() -> None:
    results = [
        _run("kafka", 0, ["a"], {"r": 1}),
        _run("kafka", 1, ["a"], {"r": 1}, status="failed"),
        _run("dbos", 0, ["a"], {"r": 2}),
        _run("dbos", 1, ["a"], {"r": 1}),
    ]
    report = build_report(results, 2)
    assert not report.statuses_equal
    assert not report.outputs_equal
    assert '-{"r":1}' in report.outputs_diff
    assert '+{"r":2}' in report.outputs_diff
    assert "MISMATCH: status, outputs" in _render(report)


def test_a_run_that_never_finished_is_reported_and_fails_the_comparison() -> None:
    stuck = RunResult("dbos", 0, "ex_1", status="timeout", problem="did not end within 5s")
    report = build_report([_run("kafka", 0, ["a"]), stuck], 1)
    assert not report.ok
    text = _render(report)
    assert "dbos run 1: did not end within 5s" in text
    assert "1 timeout" in text


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([], 50) is None


def test_runs_that_did_not_finish_on_both_tracks_still_fail_the_comparison() -> None:
    stuck = [
        RunResult(t, 0, f"ex_{t}", status="timeout", problem="did not end within 1s")
        for t in ("kafka", "dbos")
    ]
    report = build_report(stuck, 1)
    assert report.statuses_equal
    assert report.problem_runs == 2
    assert not report.ok
    assert "MISMATCH: 2 run(s) with problems" in _render(report)


def test_a_stream_that_breaks_the_delivery_guarantee_fails_the_comparison() -> None:
    broken = _run("dbos", 0, ["a"])
    broken.events.insert(2, dict(broken.events[1]))  # a duplicate of index 1
    report = build_report([_run("kafka", 0, ["a"]), broken], 1)
    assert not report.ok
    assert "indices are not 0..5 in order: [0, 1, 1, 2, 3, 4]" in _render(report)
