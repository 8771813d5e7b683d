"""Riding out a database outage: which errors are transient, and how long to retry them.

One rule, used by every place that must not turn a PostgreSQL restart or failover into a
failure it reports (the API answers 503 for the same errors; workers, the `tally` node and
the event and task writers retry them). An error is transient when the connection, not the
statement, failed: the server is restarting or shutting down, refused or dropped us, or the
pool could not hand out a connection in time. Retries back off exponentially (with jitter, so
processes that lost the database together do not come back in lockstep) until a deadline,
then the last error is raised.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import asyncpg
import structlog
from sqlalchemy import exc as sa_exc

from twintrack.nodes.base import InfrastructureError

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: SQLSTATE classes/codes of a lost or refused connection: 08 connection exception, 57P01-03
#: admin/crash shutdown and "the database system is starting up / shutting down", 53300 too
#: many connections.
_TRANSIENT_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 2.0
_deadline_s = 30.0


def set_default_deadline(seconds: float) -> None:
    """How long retries go on by default (DB_RETRY_DEADLINE_S, applied by the factory)."""
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


def _transient_one(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError):  # pool: no connection
        return True
    if isinstance(exc, ConnectionError | TimeoutError | asyncpg.InternalClientError):
        return True
    if isinstance(exc, OSError) and exc.errno is not None:  # refused, reset, unreachable
        return True
    if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATES):
        return True
    return _is_psycopg_operational(exc)


def _is_psycopg_operational(exc: BaseException) -> bool:
    """DBOS talks to its system database with psycopg: its connection failures count too."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg comes with DBOS
        return False
    return isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, psycopg.errors.QueryCanceled
    )


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a lost or refused database connection."""
    return any(_transient_one(e) for e in _chain(exc))


async def retry_transient(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    deadline_s: float | None = None,
) -> T:
    """`await operation()`, retried on transient errors with backoff until `deadline_s`.

    Only for operations that are safe to repeat (idempotent, or fenced so a repeat is refused):
    a connection lost during COMMIT leaves it unknown whether the first try took effect.
    Anything not transient, and the last transient error after the deadline, is raised.
    """
    ends = time.monotonic() + (_deadline_s if deadline_s is None else deadline_s)
    delay = _FIRST_DELAY_S
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > ends:
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
