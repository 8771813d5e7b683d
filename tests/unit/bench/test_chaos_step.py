"""The soak's fault schedule: every fault it promises happens once, in its order."""

from __future__ import annotations

from bench.soak import chaos_step

WINDOW = 4.0


def step(now: float, **kw: bool) -> str:
    state = {
        "postgres_done": False,
        "stall_done": False,
        "may_kill": True,
        "killed_yet": False,
    } | kw
    return chaos_step(now, WINDOW, next_kill=1.0, **state)


def test_the_restart_waits_for_the_first_kill_while_one_can_still_happen() -> None:
    assert step(2.0) == "kill"
    assert step(2.0, killed_yet=True) == "postgres"


def test_the_restart_goes_ahead_once_no_kill_can_happen() -> None:
    assert step(2.0, may_kill=False) == "postgres"


def test_the_stall_follows_the_restart_at_two_thirds() -> None:
    assert step(2.0, postgres_done=True, killed_yet=True) == "kill"
    assert step(2.0, postgres_done=True, may_kill=False) == "wait"
    assert step(3.0, postgres_done=True, killed_yet=True) == "broker"


def test_nothing_is_due_before_the_first_kill_time() -> None:
    assert step(0.5) == "wait"


def test_done_once_both_faults_happened_and_no_kill_can() -> None:
    assert step(9.0, postgres_done=True, stall_done=True, may_kill=False) == "done"
    assert step(9.0, postgres_done=True, stall_done=True, killed_yet=True) == "kill"
