"""Run Alembic from code (`twintrack migrate`, test fixtures) against a given database URL.

The scripts live in `alembic/` at the root of the checkout, next to `alembic.ini`, so the plain
`alembic` command works too. Programmatic runs build their Config in code, which leaves the
caller's logging configuration alone.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import pool
from sqlalchemy.engine import Connection

from twintrack.adapters.postgres.db import create_engine

REPO_ROOT = Path(__file__).resolve().parents[4]
SCRIPT_LOCATION = REPO_ROOT / "alembic"


def alembic_config() -> Config:
    """A Config that finds the scripts wherever the current directory is."""
    if not (SCRIPT_LOCATION / "env.py").is_file():
        raise RuntimeError(f"Alembic scripts not found at {SCRIPT_LOCATION}")
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("path_separator", "os")
    return config


def _run(connection: Connection, action: str, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    getattr(command, action)(config, revision)


async def _migrate(url: str, action: str, revision: str) -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run, action, revision)
    finally:
        await engine.dispose()


async def upgrade_head(url: str) -> None:
    """Bring the database at `url` to the latest schema (idempotent)."""
    await _migrate(url, "upgrade", "head")


async def downgrade_base(url: str) -> None:
    """Remove every table the migrations created (the Alembic version table stays, empty)."""
    await _migrate(url, "downgrade", "base")
