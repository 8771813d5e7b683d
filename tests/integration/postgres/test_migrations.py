"""The hand-written Alembic revision builds exactly tables.py, and tears down cleanly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.fixtures.database import ServerWithUrl, _copy_database, _drop_database
from twintrack.adapters.postgres.db import create_engine, with_database
from twintrack.adapters.postgres.migrations import alembic_config, downgrade_base, upgrade_head
from twintrack.adapters.postgres.tables import metadata

pytestmark = pytest.mark.integration

EXPECTED_TABLES = {
    "flows",
    "flow_versions",
    "executions",
    "execution_claims",
    "workers",
    "execution_recoveries",
    "api_keys",
    "tally_counters",
    "tally_increments",
    "execution_commands",
    "kafka_event_logs",
    "idempotency_keys",
    "owner_admissions",
    "rollout_state",
    "rollout_history",
    "shadow_runs",
    "shadow_mismatches",
    "rollout_guard_verdicts",
    "bulk_operations",
    "bulk_operation_items",
}

# Everything a migration could leave behind in the public schema, by kind.
LEFTOVERS_SQL = """
SELECT c.relkind::text AS kind, c.relname AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public'
UNION ALL
SELECT 'type', t.typname
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'c') AND t.typrelid = 0
UNION ALL
SELECT 'function', p.proname
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public'
"""


async def _objects(url: str) -> set[tuple[str, str]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(text(LEFTOVERS_SQL))).all()
    finally:
        await engine.dispose()
    return {(kind, name) for kind, name in rows}


def _tables(objects: set[tuple[str, str]]) -> set[str]:
    return {name for kind, name in objects if kind == "r"}


async def test_upgrade_then_downgrade_leaves_nothing_behind(empty_database_url: str) -> None:
    await upgrade_head(empty_database_url)
    assert _tables(await _objects(empty_database_url)) == EXPECTED_TABLES | {"alembic_version"}

    await downgrade_base(empty_database_url)
    # Only Alembic's own (now empty) bookkeeping table and its primary key remain.
    assert await _objects(empty_database_url) == {
        ("r", "alembic_version"),
        ("i", "alembic_version_pkc"),
    }

    await upgrade_head(empty_database_url)
    assert _tables(await _objects(empty_database_url)) == EXPECTED_TABLES | {"alembic_version"}


async def test_upgrade_head_twice_is_a_no_op(empty_database_url: str) -> None:
    await upgrade_head(empty_database_url)
    before = await _objects(empty_database_url)
    await upgrade_head(empty_database_url)
    assert await _objects(empty_database_url) == before


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, metadata))


async def test_migrated_schema_matches_tables_py(empty_database_url: str) -> None:
    await upgrade_head(empty_database_url)
    engine = create_engine(empty_database_url)
    try:
        async with engine.connect() as connection:
            diff = await connection.run_sync(_diff)
    finally:
        await engine.dispose()
    assert diff == []


# The catalog as PostgreSQL itself prints it: catches what compare_metadata skips (CHECK
# constraints, constraint names, partial-index predicates, identity columns).
CATALOG_SQL = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity,
               identity_generation
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name <> 'alembic_version'
    """,
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace AND contype <> 'n'
          AND conrelid <> 'alembic_version'::regclass
    """,
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'alembic_version'
    """,
}


async def _catalog(url: str) -> dict[str, set[tuple[Any, ...]]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return {
                part: {tuple(row) for row in await connection.execute(text(sql))}
                for part, sql in CATALOG_SQL.items()
            }
    finally:
        await engine.dispose()


@pytest_asyncio.fixture
async def create_all_database_url(
    pg_server: ServerWithUrl, admin_engine: AsyncEngine
) -> AsyncIterator[str]:
    """An empty database where tables.py's metadata.create_all() (not Alembic) built the schema."""
    name = await _copy_database(admin_engine, "template0")
    url = with_database(pg_server.url, name)
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
            await connection.execute(text("CREATE TABLE alembic_version (version_num text)"))
        yield url
    finally:
        await engine.dispose()
        await _drop_database(admin_engine, name)


async def test_migrated_catalog_equals_create_all_catalog(
    empty_database_url: str, create_all_database_url: str
) -> None:
    await upgrade_head(empty_database_url)
    migrated = await _catalog(empty_database_url)
    created = await _catalog(create_all_database_url)
    for part in CATALOG_SQL:
        assert migrated[part] - created[part] == set(), f"{part} only in the migration"
        assert created[part] - migrated[part] == set(), f"{part} only in tables.py"


async def test_template_database_is_at_head(database_url: str) -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            version = await connection.execute(text("SELECT version_num FROM alembic_version"))
            assert version.scalar_one() == head
    finally:
        await engine.dispose()


async def test_keys_made_before_0003_stay_plain_keys(empty_database_url: str) -> None:
    """0003 adds `api_keys.is_admin` with a constant default: every existing key is not admin,
    and going back to 0002 drops the column without touching the keys."""
    from twintrack.adapters.postgres.migrations import _migrate

    insert = (
        "INSERT INTO api_keys (id, owner_id, key_hash, prefix) "
        "VALUES ('key_old', 'alice', 'hash', 'tt_old')"
    )
    await _migrate(empty_database_url, "upgrade", "0002")
    engine = create_engine(empty_database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(insert))
        await _migrate(empty_database_url, "upgrade", "0003")
        async with engine.connect() as connection:
            flags = await connection.execute(text("SELECT id, is_admin FROM api_keys"))
            assert flags.all() == [("key_old", False)]
        await _migrate(empty_database_url, "downgrade", "0002")
        async with engine.connect() as connection:
            ids = await connection.execute(text("SELECT id FROM api_keys"))
            assert ids.scalars().all() == ["key_old"]
    finally:
        await engine.dispose()
