"""The time-budget plugin: a test over half its timeout fails, one within it passes."""

from __future__ import annotations

import pytest

SLOW_TEST = """
import time
import pytest

@pytest.mark.timeout({timeout})
def test_work():
    time.sleep(0.6)  # the work being timed, not synchronisation
"""


def _run(pytester: pytest.Pytester, timeout: float) -> pytest.RunResult:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(SLOW_TEST.format(timeout=timeout))
    return pytester.runpytest_inprocess("-p", "tests.fixtures.budget", "-p", "no:cacheprovider")


def test_a_test_using_more_than_half_its_timeout_fails(pytester: pytest.Pytester) -> None:
    result = _run(pytester, timeout=1)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*more than 50% of its 1s timeout*"])


def test_a_test_within_half_its_timeout_passes(pytester: pytest.Pytester) -> None:
    _run(pytester, timeout=10).assert_outcomes(passed=1)


def test_the_fraction_can_be_widened_for_profiling(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_BUDGET_FRACTION", "0.9")
    _run(pytester, timeout=1).assert_outcomes(passed=1)
