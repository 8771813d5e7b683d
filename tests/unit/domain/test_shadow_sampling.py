"""The shadow sample (domain/shadow.py): decided by the execution id alone, so every process
agrees, and raising the percentage only adds executions."""

from __future__ import annotations

from twintrack.domain.comparison import EXECUTION_ID_RE
from twintrack.domain.ids import new_execution_id
from twintrack.domain.shadow import shadow_execution_id, shadow_sampled

IDS = [new_execution_id() for _ in range(2000)]


def test_the_sample_is_stable_and_grows_with_the_percentage() -> None:
    assert not any(shadow_sampled(i, 0) for i in IDS)
    assert all(shadow_sampled(i, 100) for i in IDS)
    at_10 = {i for i in IDS if shadow_sampled(i, 10)}
    at_30 = {i for i in IDS if shadow_sampled(i, 30)}
    assert at_10 <= at_30  # raising only adds
    assert at_10 == {i for i in IDS if shadow_sampled(i, 10)}  # the same answer every time
    assert 0.05 < len(at_10) / len(IDS) < 0.15
    assert 0.25 < len(at_30) / len(IDS) < 0.35


def test_the_shadow_id_is_one_per_execution_and_looks_like_any_id() -> None:
    a, b = IDS[:2]
    assert shadow_execution_id(a) == shadow_execution_id(a)
    assert shadow_execution_id(a) != shadow_execution_id(b)
    assert EXECUTION_ID_RE.fullmatch(shadow_execution_id(a))  # aliased like any id
