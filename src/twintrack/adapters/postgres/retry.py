"""What a lost PostgreSQL connection looks like, for the one transient rule (core/transient.py).

An error is transient when the connection, not the statement, failed: the server is restarting
or shutting down, refused or dropped us, or the pool could not hand out a connection in time.
Importing this module registers the rule.
"""

from __future__ import annotations

import asyncpg
from sqlalchemy import exc as sa_exc

from twintrack.core import transient

#: SQLSTATE classes/codes of a lost or refused connection: 08 connection exception, 57P01-03
#: admin/crash shutdown and "the database system is starting up / shutting down", 53300 too
#: many connections.
_TRANSIENT_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")


def is_lost_connection(exc: BaseException) -> bool:
    """One exception of a chain: a dropped, refused or unobtainable database connection."""
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


transient.register(is_lost_connection)
