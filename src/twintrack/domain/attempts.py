"""How many runs an execution gets, on either track: the one give-up rule.

`attempt` on the execution row counts runs started (each move from `queued` to `running`), so
a re-run's stream continues with `execution.retrying {attempt}` and its numbers only grow. Not
every run that ends without an outcome failed: a worker shutting down (SIGTERM, rolling deploy)
hands its unfinished runs over, and each handover is recorded (`execution_recoveries`, reason
`handover`). Only failed runs spend the MAX_ATTEMPTS budget:

    failed runs = attempt - handovers

and when a run ends without an outcome (crash, lost lease, a worker that stopped renewing its
claim) the execution runs again unless the failed runs have reached MAX_ATTEMPTS.
"""

from __future__ import annotations

HANDOVER = "handover"  # the audit reason of a run handed over at shutdown


def failed_runs(attempt: int, handovers: int) -> int:
    return max(0, attempt - handovers)


def exhausted(attempt: int, handovers: int, max_attempts: int) -> bool:
    """After the run numbered `attempt` ended without an outcome: is that the last one?"""
    return failed_runs(attempt, handovers) >= max_attempts


def give_up_reason(failed: int, max_attempts: int, last_failure: str) -> str:
    """The execution's error when it is given up: the count, the limit and the true last cause."""
    runs = "attempt" if failed == 1 else "attempts"
    return f"gave up after {failed} failed {runs} (MAX_ATTEMPTS={max_attempts}): {last_failure}"
