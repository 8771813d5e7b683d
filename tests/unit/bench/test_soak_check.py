"""The chaos soak's verdicts (bench.soak_check): each problem it counts is recognised, and a
clean or legitimately retried execution is not miscounted as one."""

from __future__ import annotations

from typing import Any

from bench.soak_check import Observed, judge, tally_up

CLEAN = [
    "execution.created",
    "execution.queued",
    "execution.started",
    "node.started",
    "execution.completed",
]


def _events(types: list[str], start: int = 0) -> list[dict[str, Any]]:
    return [{"index": start + i, "type": t} for i, t in enumerate(types)]


def _completed(**changes: Any) -> Observed:
    obs = Observed(
        "e1",
        live=_events(CLEAN),
        replay=_events(CLEAN),
        statuses=["queued", "running", "completed"],
        final_status="completed",
        attempt=1,
        outputs={"count": 1},
        tally=1,
    )
    for name, value in changes.items():
        setattr(obs, name, value)
    return obs


def _flags(obs: Observed) -> set[str]:
    return {name for name, value in vars(judge(obs)).items() if value}


def test_a_clean_execution_has_no_problem() -> None:
    assert _flags(_completed()) == set()


def test_a_retry_that_reapplied_the_side_effect_is_allowed_and_reported_apart() -> None:
    events = _events([*CLEAN[:4], "execution.retrying", "node.started", "execution.completed"])
    obs = _completed(live=events, replay=events, attempt=2, tally=2, outputs={"count": 2})
    assert _flags(obs) == {"reapplied"}


def test_more_side_effects_than_attempts_is_repeated() -> None:
    assert "repeated" in _flags(_completed(tally=2))


def test_a_side_effect_after_the_completing_attempt_is_repeated() -> None:
    # two attempts, two increments, but the completing attempt saw count 1: one came after it
    assert "repeated" in _flags(_completed(attempt=2, tally=2, outputs={"count": 1}))


def test_completed_without_its_side_effect_is_missing() -> None:
    assert "missing" in _flags(_completed(tally=0, outputs={}))


def test_two_terminal_events_or_a_flapping_status_is_completed_twice() -> None:
    doubled = _events([*CLEAN, "execution.completed"])
    assert "twice" in _flags(_completed(replay=doubled))
    assert "twice" in _flags(_completed(statuses=["running", "completed", "running", "completed"]))
    assert "twice" in _flags(_completed(final_status="failed"))  # row says otherwise than stream


def test_gaps_and_duplicates_live_and_replayed() -> None:
    gapped = [e for e in _events(CLEAN) if e["index"] != 2]
    assert "gap" in _flags(_completed(replay=gapped))
    assert "gap" in _flags(_completed(live=gapped))
    assert "gap" in _flags(_completed(replay=_events(CLEAN[:4])))  # no terminal event
    repeated = [*_events(CLEAN[:3]), *_events(CLEAN[2:], start=2)]
    assert "duplicate" in _flags(_completed(live=repeated))
    renumbered = _events([*CLEAN[:3], "node.completed", "execution.completed"])
    assert "duplicate" in _flags(_completed(live=renumbered))


def test_not_terminal_at_the_deadline_is_lost_or_hung_by_whether_it_was_picked_up() -> None:
    assert _flags(Observed("q", final_status="queued")) == {"lost"}
    assert _flags(Observed("c", final_status="created")) == {"lost"}
    assert _flags(Observed("gone", final_status=None)) == {"lost"}
    assert _flags(Observed("r", live=_events(CLEAN[:4]), final_status="running")) == {"hung"}


def test_tally_up_counts_each_problem_once_per_execution_with_examples() -> None:
    failed = _completed(final_status="failed", error="InterfaceError: connection is closed")
    failed.live = failed.replay = _events([*CLEAN[:4], "execution.failed"])
    counts = tally_up(
        4, 1, [_completed(), _completed(tally=3), failed, Observed("q", final_status="queued")]
    )
    assert (counts.target, counts.accepted, counts.refused, counts.completed) == (4, 4, 1, 2)
    assert (counts.repeated_side_effects, counts.failed, counts.lost) == (1, 1, 1)
    assert counts.failure_reasons == {"InterfaceError: connection is closed": 1}
    assert counts.examples["lost"] == ["q"]
    assert counts.faults == 2
