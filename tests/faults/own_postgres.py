"""A PostgreSQL server of the test's own, to restart: never the session's shared one.

The server lives for the module (initdb is the slow part); each test gets a fresh database on it,
migrated like production (`bootstrap.migrate`: our schema and DBOS's), so a restart in one test
breaks nothing another test holds.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import structlog
from sqlalchemy import text

from twintrack.adapters.postgres.db import create_engine, with_database
from twintrack.bootstrap import migrate
from twintrack.observability.logs import processors
from twintrack.tooling.embedded.postgres import EmbeddedPostgres


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """An embedded PostgreSQL this module may stop and restart (`restart`, `stop_keeping_data`)."""
    with EmbeddedPostgres() as server:
        yield server


@pytest_asyncio.fixture
async def own_database_url(own_postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    """URL of a fresh, migrated database on `own_postgres`; dropped afterwards."""
    if not own_postgres.is_running():  # a failed test may have left it down
        own_postgres.start_again()
    name = "tt_fault_" + uuid.uuid4().hex[:16]
    admin = create_engine(own_postgres.url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = with_database(own_postgres.url, name)
        await migrate(url)
        yield url
        if not own_postgres.is_running():
            own_postgres.start_again()
        await admin.dispose()  # connections from before a restart are dead
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@pytest.fixture
def production_logging() -> Iterator[None]:
    """Log as deployed processes do (plain tracebacks): structlog's test-time default renders
    rich tracebacks with locals, seconds each, which an outage's retries would make a stall."""
    saved = structlog.get_config()
    structlog.configure(processors=processors("console"))
    yield
    structlog.configure(**saved)
