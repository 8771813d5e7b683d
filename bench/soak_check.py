"""What the chaos soak counts, defined in one place: each execution's observations to a verdict.

Every soak execution runs `const → tally → delay → output`, with a tally counter named for that
execution alone, so every side effect it ever applied can be counted. For each *accepted*
execution (POST create answered 201 and POST start 202) the soak keeps what it saw and this
module decides, per execution:

- **lost**: not terminal at the deadline and nothing was running it: its row is still `created`
  or `queued` (the task or workflow that would run it is gone), or the row is missing.
- **hung**: not terminal at the deadline although it was picked up: `running` or `paused`.
- **completed twice**: more than one terminal event in its stream (live or replayed), or its
  status moved on after a terminal status was seen (flapping), or the row's terminal status is
  not the one the stream's terminal event announced.
- **stream gap / duplicate**: the replayed stream's indices are not exactly 0, 1, 2, … with one
  terminal event last, or, live, an index was skipped or received twice (the client resumes
  from the last index + 1, so nothing should repeat), or live and replay disagree on an index.
- **repeated side effect**: the counter was applied more often than the execution's attempts
  allow (`count > attempt`: each attempt runs `tally` at most once), or a completed execution's
  counter differs from the count its completing attempt output (a side effect applied after, or
  beside, the attempt that completed it). A count above 1 with as many attempts is a retry
  re-applying an at-least-once node: reported apart (`reapplied`), not a fault.
- **missing side effect**: completed, yet its counter is 0 or its output has no count.
- **failed**: ended `failed`: no soak flow can fail, so this is an infrastructure fault reported
  as a flow failure (or attempts exhausted by the kills).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

TERMINAL_EVENTS = {"execution.completed", "execution.failed", "execution.stopped"}
TERMINAL_STATUSES = {"completed", "failed", "stopped"}
NOT_PICKED_UP = {"created", "queued"}


@dataclass
class Observed:
    """Everything the soak saw of one accepted execution."""

    execution_id: str
    #: events received live, in arrival order, across reconnects ({index, type, ...})
    live: list[dict[str, Any]] = field(default_factory=list)
    #: the whole stream read once more at the end (None: not read, e.g. never terminal)
    replay: list[dict[str, Any]] | None = None
    #: successive distinct statuses the status poller saw
    statuses: list[str] = field(default_factory=list)
    final_status: str | None = None  # None: the row is missing
    attempt: int = 0
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    tally: int = 0


@dataclass(frozen=True)
class Verdict:
    lost: bool
    hung: bool
    twice: bool
    gap: bool
    duplicate: bool
    repeated: bool
    missing: bool
    reapplied: bool
    failed: bool


def _duplicates(indices: Sequence[int]) -> bool:
    return len(set(indices)) != len(indices)


def _live_gap(indices: Sequence[int]) -> bool:
    """A skipped index in what arrived live (a repeat is a duplicate, not a gap)."""
    expected = 0
    for index in indices:
        if index > expected:
            return True
        expected = max(expected, index + 1)
    return False


def _replay_gap(events: Sequence[dict[str, Any]]) -> bool:
    indices = [int(e["index"]) for e in events]
    ordered = sorted(set(indices))
    if ordered != list(range(len(ordered))):
        return True
    return not events or events[-1]["type"] not in TERMINAL_EVENTS


def _disagree(live: Sequence[dict[str, Any]], replay: Sequence[dict[str, Any]]) -> bool:
    replayed = {int(e["index"]): e["type"] for e in replay}
    return any(replayed.get(int(e["index"]), e["type"]) != e["type"] for e in live)


def _flapped(statuses: Sequence[str]) -> bool:
    """A status after a terminal one (the poller records changes only)."""
    return any(s in TERMINAL_STATUSES for s in statuses[:-1])


def _terminal_types(events: Sequence[dict[str, Any]]) -> list[str]:
    return [str(e["type"]) for e in events if e["type"] in TERMINAL_EVENTS]


def judge(obs: Observed) -> Verdict:
    """The verdict on one accepted execution (definitions: the module docstring)."""
    status = obs.final_status
    terminal = status in TERMINAL_STATUSES
    stream = obs.replay if obs.replay is not None else obs.live
    live_idx = [int(e["index"]) for e in obs.live]
    replay_idx = [int(e["index"]) for e in obs.replay or []]
    ends = set(_terminal_types(obs.live)) | set(_terminal_types(obs.replay or []))
    twice = (
        len(_terminal_types(obs.live)) > 1
        or len(_terminal_types(obs.replay or [])) > 1
        or len(ends) > 1
        or _flapped(obs.statuses)
        or (terminal and bool(ends) and ends != {f"execution.{status}"})
    )
    counted = obs.outputs.get("count")
    completed = status == "completed"
    return Verdict(
        lost=status is None or status in NOT_PICKED_UP,
        hung=status is not None and not terminal and status not in NOT_PICKED_UP,
        twice=twice,
        gap=_live_gap(live_idx)
        or (obs.replay is not None and _replay_gap(obs.replay))
        or (terminal and obs.replay is None and not _terminal_types(stream)),
        duplicate=_duplicates(live_idx)
        or _duplicates(replay_idx)
        or (obs.replay is not None and _disagree(obs.live, obs.replay)),
        repeated=obs.tally > obs.attempt
        or (completed and isinstance(counted, int) and counted != obs.tally),
        missing=completed and (obs.tally == 0 or not isinstance(counted, int)),
        reapplied=obs.tally > 1 and obs.tally <= obs.attempt,
        failed=status == "failed",
    )


@dataclass
class Counts:
    """The soak's numbers for one mode."""

    target: int = 0
    accepted: int = 0
    refused: int = 0
    completed: int = 0
    failed: int = 0
    stopped: int = 0
    lost: int = 0
    hung: int = 0
    completed_twice: int = 0
    stream_gaps: int = 0
    stream_duplicates: int = 0
    repeated_side_effects: int = 0
    missing_side_effects: int = 0
    reapplied_by_retry: int = 0
    retried: int = 0  # executions with more than one attempt
    #: up to 5 example ids per problem, for the operator to look at
    examples: dict[str, list[str]] = field(default_factory=dict)
    #: the distinct reasons of `failed` executions, with how many
    failure_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def faults(self) -> int:
        """Outcomes the soak must never see (`failed` excluded: it has a reason to read)."""
        return (
            self.lost
            + self.hung
            + self.completed_twice
            + self.stream_gaps
            + self.stream_duplicates
            + self.repeated_side_effects
            + self.missing_side_effects
        )


_PROBLEMS = {
    "lost": "lost",
    "hung": "hung",
    "twice": "completed_twice",
    "gap": "stream_gaps",
    "duplicate": "stream_duplicates",
    "repeated": "repeated_side_effects",
    "missing": "missing_side_effects",
    "failed": "failed",
}


def tally_up(target: int, refused: int, observed: Iterable[Observed]) -> Counts:
    counts = Counts(target=target, refused=refused)
    reasons: Counter[str] = Counter()
    for obs in observed:
        counts.accepted += 1
        verdict = judge(obs)
        counts.completed += obs.final_status == "completed"
        counts.stopped += obs.final_status == "stopped"
        counts.retried += obs.attempt > 1
        counts.reapplied_by_retry += verdict.reapplied
        for flag, name in _PROBLEMS.items():
            if getattr(verdict, flag):
                setattr(counts, name, getattr(counts, name) + 1)
                examples = counts.examples.setdefault(name, [])
                if len(examples) < 5:
                    examples.append(obs.execution_id)
        if verdict.failed:
            reasons[(obs.error or "no reason recorded")[:160]] += 1
    counts.failure_reasons = dict(reasons.most_common(10))
    return counts
