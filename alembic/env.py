"""Alembic environment: async engine on asyncpg, or a connection handed in by the caller.

Where the URL comes from, first match wins: a connection in `config.attributes["connection"]`
(used by twintrack.adapters.postgres.migrations, inside the caller's transaction), `config.attributes["url"]`,
`-x url=...` on the command line, the DATABASE_URL environment variable.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection

from twintrack.adapters.postgres.db import create_engine, to_async_url
from twintrack.adapters.postgres.tables import metadata

config = context.config
target_metadata = metadata

# Serialises concurrent `twintrack migrate` runs against one database (any constant will do).
MIGRATION_LOCK_ID = 0x7477696E  # "twin"

if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    url = (
        config.attributes.get("url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("DATABASE_URL")
    )
    if not url:
        raise RuntimeError("no database URL: pass -x url=... or set DATABASE_URL")
    return str(url)


def run_migrations_offline() -> None:
    """Emit SQL instead of running it (`alembic upgrade head --sql`)."""
    context.configure(
        url=to_async_url(database_url()),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    elif context.is_offline_mode():
        run_migrations_offline()
    else:
        asyncio.run(run_async_migrations())


main()
