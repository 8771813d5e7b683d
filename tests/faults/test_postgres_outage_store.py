"""The pieces a PostgreSQL restart tests, on a server of the module's own: the restart helper
itself, pooled connections after it, and a `tally` increment waiting the outage out."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.faults.own_postgres import own_database_url, own_postgres  # noqa: F401 (fixtures)
from twintrack.adapters.postgres.counters import PostgresCounterStore
from twintrack.adapters.postgres.db import create_engine, create_session_factory
from twintrack.tooling.embedded.postgres import EmbeddedPostgres


async def test_restart_keeps_port_and_data_and_drops_every_connection(
    own_postgres: EmbeddedPostgres,  # noqa: F811
    own_database_url: str,  # noqa: F811
) -> None:
    url, port, old_pid = own_postgres.url, own_postgres.port, own_postgres.pid
    conn = await asyncpg.connect(own_database_url)
    await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hello')")

    assert own_postgres.restart() == url
    assert own_postgres.port == port
    assert own_postgres.pid != old_pid
    with pytest.raises((asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.InterfaceError)):
        await conn.fetchval("SELECT 1")
    conn.terminate()
    again = await asyncpg.connect(own_database_url)
    try:
        assert await again.fetchval("SELECT v FROM kept") == "hello"
    finally:
        await again.close()


async def test_the_pool_replaces_connections_a_restart_killed(
    own_postgres: EmbeddedPostgres,  # noqa: F811
    own_database_url: str,  # noqa: F811
) -> None:
    engine = create_engine(own_database_url, pool_size=2)
    try:
        counters = PostgresCounterStore(create_session_factory(engine))
        assert await counters.increment("pooled") == 1  # leaves a connection in the pool
        # In a thread, as a real restart happens: the loop sees the server close the socket.
        await asyncio.to_thread(own_postgres.restart)
        assert await counters.get("pooled") == 1  # replaced at checkout: no failed request
    finally:
        await engine.dispose()


async def test_a_keyed_increment_counts_once_and_waits_out_an_outage(
    own_postgres: EmbeddedPostgres,  # noqa: F811
    own_database_url: str,  # noqa: F811
) -> None:
    engine = create_engine(own_database_url)
    try:
        counters = PostgresCounterStore(create_session_factory(engine))
        assert await counters.increment("t", key="ex_a/1/n") == 1
        assert await counters.increment("t", key="ex_a/1/n") == 1  # a repeat counts once
        assert await counters.increment("t", key="ex_a/2/n") == 2  # another attempt counts

        own_postgres.stop_keeping_data()
        waiting = asyncio.create_task(counters.increment("t", key="ex_b/1/n"))
        await asyncio.sleep(1.0)  # the outage's length, not synchronisation
        assert not waiting.done()  # retrying, not failed
        await asyncio.to_thread(own_postgres.start_again)
        assert await asyncio.wait_for(waiting, timeout=15) == 3
        assert await counters.get("t") == 3
    finally:
        await engine.dispose()
