"""Database URLs and engines: one place that turns whatever URL an operator gives into asyncpg.

Operators and tools hand us libpq-style URLs (`postgres://`, `postgresql://`, with query
parameters such as `?host=/socket/dir` or `sslmode=require`); SQLAlchemy needs
`postgresql+asyncpg://` and asyncpg understands only some of libpq's parameters, so the rest are
translated into asyncpg connect arguments here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine

import twintrack.adapters.postgres.retry  # noqa: F401  (registers the lost-connection rule)

ASYNC_DRIVERNAME = "postgresql+asyncpg"
_POSTGRES_SCHEMES = frozenset({"postgres", "postgresql"})

# libpq parameters asyncpg accepts under another name (and, for timeouts, another type).
_LIBPQ_RENAMES: dict[str, str] = {"sslmode": "ssl", "dbname": "database"}
_LIBPQ_FLOATS: dict[str, str] = {"connect_timeout": "timeout"}
# libpq parameters that are really server settings (GUCs) sent at connect time.
_LIBPQ_SERVER_SETTINGS = frozenset({"application_name"})


def _check_scheme(url: URL) -> None:
    backend = url.drivername.split("+", 1)[0]
    if backend not in _POSTGRES_SCHEMES:
        raise ValueError(f"not a PostgreSQL URL: {url.render_as_string(hide_password=True)}")


def to_async_url(url: str | URL) -> URL:
    """The SQLAlchemy asyncpg URL for a `postgres://`, `postgresql://` or `postgresql+…://` URL.

    Query parameters are kept as they are (`?host=/dir` stays a Unix-socket directory); use
    `split_libpq_params` or `create_engine` to translate the libpq-only ones.
    """
    parsed = make_url(url) if isinstance(url, str) else url
    _check_scheme(parsed)
    return parsed.set(drivername=ASYNC_DRIVERNAME)


def split_libpq_params(url: str | URL) -> tuple[URL, dict[str, Any]]:
    """Split an URL into (asyncpg URL, connect_args) so libpq-only parameters still take effect."""
    async_url = to_async_url(url)
    query = dict(async_url.query)
    connect_args: dict[str, Any] = {}
    server_settings: dict[str, str] = {}
    for name, value in list(query.items()):
        if isinstance(value, tuple):
            continue  # multi-host lists: SQLAlchemy's asyncpg dialect understands them as they are
        if name in _LIBPQ_RENAMES:
            connect_args[_LIBPQ_RENAMES[name]] = value
        elif name in _LIBPQ_FLOATS:
            connect_args[_LIBPQ_FLOATS[name]] = float(value)
        elif name in _LIBPQ_SERVER_SETTINGS:
            server_settings[name] = value
        else:
            continue
        del query[name]
    if server_settings:
        connect_args["server_settings"] = server_settings
    return async_url.set(query=query), connect_args


def with_database(url: str | URL, database: str) -> str:
    """The same server URL (credentials, socket, parameters) pointing at another database."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.set(database=database).render_as_string(hide_password=False)


def create_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """An AsyncEngine on asyncpg for any PostgreSQL URL form; `kwargs` go to SQLAlchemy.

    A pooled connection the server has closed (a restart, a failover, an idle timeout) is
    replaced at checkout instead of being handed out to fail one request: the equivalent of
    `pool_pre_ping` without its round trip on every checkout. A connection that died without
    the client noticing (a half-open socket) fails once; SQLAlchemy then recycles the pool.
    """
    async_url, connect_args = split_libpq_params(url)
    connect_args.update(kwargs.pop("connect_args", {}))
    engine = _create_async_engine(async_url, connect_args=connect_args, **kwargs)
    event.listen(engine.sync_engine.pool, "checkout", _refuse_closed)
    return engine


def _refuse_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Pool checkout hook: DisconnectionError makes the pool try a fresh connection."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None and driver.is_closed():
        raise sa_exc.DisconnectionError("the server closed this pooled connection")


def one_statement(sessions: async_sessionmaker[AsyncSession]) -> async_sessionmaker[AsyncSession]:
    """Sessions on the same pool for work of ONE statement, in autocommit: a read, or a write
    that is atomic by itself. asyncpg then sends neither BEGIN nor COMMIT/ROLLBACK, so such a
    call is one round trip instead of three. Work of several statements that must agree (or
    commit together) keeps a transaction (`sessions`)."""
    engine = sessions.kw.get("bind")
    if not isinstance(engine, AsyncEngine):
        return sessions
    return async_sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
    )


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded values after commit: stores return records built inside them."""
    return async_sessionmaker(engine, expire_on_commit=False)


class DriverConnection(Protocol):
    """The part of `asyncpg.Connection` the hot statements use (asyncpg ships no type hints)."""

    async def fetchrow(self, query: str, *args: Any) -> Any: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    async def execute(self, query: str, *args: Any) -> str: ...


@asynccontextmanager
async def driver(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[DriverConnection]:
    """A pooled connection's asyncpg connection itself, for a hot statement that is atomic alone.

    Through SQLAlchemy a statement costs 0.5-0.7 ms of CPU more than on asyncpg (building it,
    its cache key, result processing, a greenlet hop): measured on the API's create and start,
    where that was about a third of the process's CPU. Here the statement runs on the driver,
    outside any transaction (autocommit: SQLAlchemy has begun none on this connection, and
    gives it back without a round trip), with the JSON codecs SQLAlchemy set on the connection.
    Errors are asyncpg's own (`sqlstate` on the exception itself); a lost connection is
    transient to `core.transient` as it is through SQLAlchemy. For one statement only: work
    that must commit with other work keeps a session.
    """
    engine = sessions.kw.get("bind")
    if not isinstance(engine, AsyncEngine):
        raise TypeError("driver() needs sessions bound to an AsyncEngine")
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        yield raw.driver_connection  # type: ignore[misc]


async def driver_in(session: AsyncSession) -> DriverConnection:
    """The asyncpg connection under `session`, inside the transaction the session has begun.

    SQLAlchemy sends BEGIN lazily, with the first statement through it: call this only after
    one ran (`locked` reads its row first), so what runs on the driver joins that transaction
    and commits or rolls back with it. RuntimeError otherwise, rather than autocommit.
    """
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    if getattr(raw.dbapi_connection, "_transaction", None) is None:
        raise RuntimeError("the session has not begun its transaction on the database yet")
    return raw.driver_connection  # type: ignore[return-value]
