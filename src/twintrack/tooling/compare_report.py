"""The verdict of a comparison of both tracks (`twintrack compare` and the console's Compare
page build the same one): the runs' statuses, outputs and normalized event streams, the Kafka
track as the control and DBOS as the candidate, and their latencies from the events' own
timestamps. Pure: the runs come in, a `Report` comes out; rendering is each caller's.
"""

from __future__ import annotations

import difflib
import json
import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from twintrack.domain.comparison import Ordering, diff_streams, normalize, stream_problems, view

TRACKS = ("kafka", "dbos")  # control first, candidate second
TERMINAL_TYPES = frozenset({"execution.completed", "execution.failed", "execution.stopped"})

Events = list[dict[str, Any]]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass
class RunResult:
    track: str
    run: int
    execution_id: str | None = None
    status: str = "error"
    outputs: Any = None
    events: Events = field(default_factory=list)
    problem: str | None = None

    @property
    def create_to_start_s(self) -> float | None:
        return _between(self.events, {"execution.created"}, {"execution.started"})

    @property
    def start_to_end_s(self) -> float | None:
        return _between(self.events, {"execution.started"}, TERMINAL_TYPES)


def _timestamp(event: Mapping[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(event["timestamp"]))
    except (KeyError, ValueError):
        return None


def _between(events: Events, first: Collection[str], then: Collection[str]) -> float | None:
    """Seconds from the first event of a type in `first` to the next one of a type in `then`."""
    start: datetime | None = None
    for event in events:
        if start is None and event.get("type") in first:
            start = _timestamp(event)
        elif start is not None and event.get("type") in then:
            end = _timestamp(event)
            return None if end is None else (end - start).total_seconds()
    return None


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (None for no values): exact for the small N of a comparison."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class TrackSummary:
    track: str
    statuses: Counter[str]
    outputs: Counter[str]
    variants: int
    create_to_start: list[float]
    start_to_end: list[float]
    problems: list[str]


@dataclass
class Report:
    runs: int
    summaries: dict[str, TrackSummary]
    statuses_equal: bool
    outputs_equal: bool
    stream_mismatches: list[int]
    stream_diff: str
    outputs_diff: str

    @property
    def problem_runs(self) -> int:
        """Runs that never ended (timeout, broken stream) or broke the stream guarantee."""
        return sum(len(s.problems) for s in self.summaries.values())

    @property
    def ok(self) -> bool:
        return (
            self.statuses_equal
            and self.outputs_equal
            and not self.stream_mismatches
            and not self.problem_runs
        )


def _run_problem(result: RunResult) -> str | None:
    """What is wrong with one run on its own: it never ended, or its stream broke the guarantee."""
    if result.problem:
        return f"run {result.run + 1}: {result.problem}"
    broken = stream_problems(result.events)
    return f"run {result.run + 1}: the event stream {'; '.join(broken)}" if broken else None


def build_report(
    results: Sequence[RunResult], runs: int, ordering: Ordering = Ordering.PER_NODE
) -> Report:
    """Compare the candidate (DBOS) runs with the control (Kafka) runs; see the module doc."""
    by_track = {
        t: sorted((r for r in results if r.track == t), key=lambda r: r.run) for t in TRACKS
    }
    normalized = {t: [normalize(r.events) for r in by_track[t]] for t in TRACKS}
    keys = {t: ["\n".join(view(n, ordering)) for n in normalized[t]] for t in TRACKS}
    summaries = {}
    for track in TRACKS:
        own = by_track[track]
        summaries[track] = TrackSummary(
            track=track,
            statuses=Counter(r.status for r in own),
            outputs=Counter(_canonical(r.outputs) for r in own),
            variants=len(set(keys[track])),
            create_to_start=[v for r in own if (v := r.create_to_start_s) is not None],
            start_to_end=[v for r in own if (v := r.start_to_end_s) is not None],
            problems=[p for r in own if (p := _run_problem(r)) is not None],
        )
    control, candidate = TRACKS
    seen = set(keys[control])
    mismatches = [i for i, key in enumerate(keys[candidate]) if key not in seen]
    stream_diff = ""
    if mismatches and normalized[control]:
        i = mismatches[0]
        reference = min(i, len(normalized[control]) - 1)
        labels = (f"{control} run {reference + 1}", f"{candidate} run {i + 1}")
        stream_diff = diff_streams(
            normalized[control][reference], normalized[candidate][i], labels, ordering
        )
    kafka_out, dbos_out = summaries[control].outputs, summaries[candidate].outputs
    outputs_diff = ""
    if kafka_out != dbos_out:
        outputs_diff = "\n".join(
            difflib.unified_diff(
                sorted(kafka_out.elements()),
                sorted(dbos_out.elements()),
                fromfile=f"{control} outputs",
                tofile=f"{candidate} outputs",
                lineterm="",
            )
        )
    return Report(
        runs=runs,
        summaries=summaries,
        statuses_equal=summaries[control].statuses == summaries[candidate].statuses,
        outputs_equal=kafka_out == dbos_out,
        stream_mismatches=mismatches,
        stream_diff=stream_diff,
        outputs_diff=outputs_diff,
    )
