"""DBOS_ROLLOUT_PERCENT: sticky per-owner cohorts (DESIGN §1.7), over many synthetic owners.

An owner in the cohort at p% stays in it at every higher percentage, so raising the percentage
only adds owners and lowering it only removes them: a rollout step never moves an owner's new
executions back and forth between the tracks.
"""

from __future__ import annotations

import itertools

import pytest

from twintrack.config import load_settings
from twintrack.domain.execution import Track
from twintrack.domain.rollout import choose_track, owner_bucket

OWNERS = [f"owner-{i:05d}" for i in range(2_000)]
PERCENTAGES = [0, 1, 5, 10, 25, 33, 50, 75, 90, 99, 100]


def cohort(percent: int, *, enable_dbos: bool = False) -> set[str]:
    return {
        owner
        for owner in OWNERS
        if choose_track(owner, enable_dbos=enable_dbos, rollout_percent=percent) is Track.DBOS
    }


def test_raising_the_percentage_only_adds_owners_and_lowering_only_removes_them() -> None:
    cohorts = {p: cohort(p) for p in PERCENTAGES}
    for low, high in itertools.combinations(PERCENTAGES, 2):
        assert cohorts[low] <= cohorts[high], (low, high)


def test_a_rollout_and_rollback_moves_each_owner_only_in_the_step_direction() -> None:
    steps = [0, 1, 10, 50, 100, 60, 20, 5, 0]
    for before, after in itertools.pairwise(steps):
        joined = cohort(after) - cohort(before)
        left = cohort(before) - cohort(after)
        stayed, moved = (left, joined) if after > before else (joined, left)
        assert not stayed, (before, after)  # nobody moves against the step ...
        assert moved, (before, after)  # ... and some move with it


@pytest.mark.parametrize("percent", [1, 5, 10, 25, 50, 75, 90])
def test_the_share_in_the_cohort_is_close_to_the_percentage(percent: int) -> None:
    share = 100 * len(cohort(percent)) / len(OWNERS)
    # binomial: 2,000 owners give a standard deviation of at most ~1.1 points
    assert abs(share - percent) < 3.5, share


def test_zero_routes_nobody_to_dbos_and_a_hundred_routes_everybody() -> None:
    assert cohort(0) == set()
    assert cohort(100) == set(OWNERS)


def test_the_same_owner_always_lands_the_same_way() -> None:
    first = {owner: owner_bucket(owner) for owner in OWNERS}
    assert all(0 <= b < 100 for b in first.values())
    assert {owner: owner_bucket(owner) for owner in reversed(OWNERS)} == first
    for percent in (10, 50):
        assert cohort(percent) == cohort(percent)


def test_buckets_are_spread_over_the_whole_range() -> None:
    buckets = {owner_bucket(owner) for owner in OWNERS}
    assert len(buckets) == 100


@pytest.mark.parametrize("enable_dbos", [False, True])
def test_the_percentage_overrides_the_flag(enable_dbos: bool) -> None:
    assert cohort(0, enable_dbos=enable_dbos) == set()
    assert cohort(100, enable_dbos=enable_dbos) == set(OWNERS)
    assert cohort(30, enable_dbos=enable_dbos) == cohort(30, enable_dbos=not enable_dbos)


@pytest.mark.parametrize("enable_dbos", [False, True])
def test_without_a_percentage_the_flag_decides_for_everybody(enable_dbos: bool) -> None:
    expected = Track.DBOS if enable_dbos else Track.KAFKA
    tracks = {choose_track(o, enable_dbos=enable_dbos, rollout_percent=None) for o in OWNERS}
    assert tracks == {expected}


def test_the_percentage_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBOS_ROLLOUT_PERCENT", "25")
    monkeypatch.setenv("ENABLE_DBOS_EXECUTION", "true")
    settings = load_settings(_env_file=None)
    assert settings.dbos_rollout_percent == 25
    monkeypatch.setenv("DBOS_ROLLOUT_PERCENT", "")
    assert load_settings(_env_file=None).dbos_rollout_percent is None
