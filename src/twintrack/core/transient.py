"""Riding out an outage of a store: how long to retry, and what counts as transient.

One rule, used by every place that must not turn a database restart or failover into a failure
it reports (the API answers 503 for the same errors; workers, the `tally` node and the event and
task writers retry them). What a lost connection looks like belongs to each adapter: it
registers a predicate here (`register`), so the use cases retry without knowing the driver.
Retries back off exponentially (with jitter, so processes that lost the database together do
not come back in lockstep) until a deadline, then the last error is raised.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import structlog

from twintrack.nodes.base import InfrastructureError

log = structlog.get_logger(__name__)
T = TypeVar("T")

_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 2.0
_deadline_s = 30.0
_rules: list[Callable[[BaseException], bool]] = [
    lambda exc: isinstance(exc, ConnectionError | TimeoutError)
]


def register(rule: Callable[[BaseException], bool]) -> None:
    """Add an adapter's "this error is a lost or refused connection" predicate."""
    if rule not in _rules:
        _rules.append(rule)


def set_default_deadline(seconds: float) -> None:
    """How long retries go on by default (DB_RETRY_DEADLINE_S, applied by the bootstrap)."""
    global _deadline_s
    _deadline_s = seconds


def default_deadline() -> float:
    return _deadline_s


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__, getattr(current, "orig", None)]


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a lost or refused connection to a store."""
    return any(rule(e) for e in _chain(exc) for rule in _rules)


async def retry_transient(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    deadline_s: float | None = None,
    also: tuple[type[BaseException], ...] = (),
) -> T:
    """`await operation()`, retried on transient errors with backoff until `deadline_s`.

    Only for operations that are safe to repeat (idempotent, or fenced so a repeat is refused):
    a connection lost during COMMIT leaves it unknown whether the first try took effect.
    `also`: more error types to retry (a process's start also waits out a broker's outage).
    Anything else, and the last retried error after the deadline, is raised.
    """
    ends = time.monotonic() + (_deadline_s if deadline_s is None else deadline_s)
    delay = _FIRST_DELAY_S
    while True:
        try:
            return await operation()
        except Exception as exc:
            retried = is_transient(exc) or isinstance(exc, also)
            if not retried or time.monotonic() + delay > ends:
                raise
            log.warning("database unavailable; retrying", what=what, error=_short(exc))
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, _MAX_DELAY_S)


def _short(exc: BaseException) -> str:
    """The error in one line: a log line per retry must stay cheap to render."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


async def retry_or_abandon(
    operation: Callable[[], Awaitable[T]], *, what: str, deadline_s: float | None = None
) -> T:
    """`retry_transient` for work a node does: a database still down after the deadline raises
    InfrastructureError, so the engine abandons the run to recovery instead of failing it."""
    try:
        return await retry_transient(operation, what=what, deadline_s=deadline_s)
    except Exception as exc:
        if is_transient(exc):
            raise InfrastructureError(f"{what}: database unavailable ({_short(exc)})") from exc
        raise
