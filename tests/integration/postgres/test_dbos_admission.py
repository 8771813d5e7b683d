"""The DBOS admission check (adapters/dbos/admission.py) on a real server, each way DBOS
admission really breaks in the test's own database: rights revoked from the API's role, the
system schema behind, a table gone, the schema missing — and a migrated one admits."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from twintrack.adapters.dbos.admission import DbosAdmission
from twintrack.adapters.postgres.db import create_engine

pytestmark = pytest.mark.integration


async def run(engine: AsyncEngine, *statements: str) -> None:
    async with engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))


@pytest_asyncio.fixture
async def role_engine(db_engine: AsyncEngine, database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the same database as a fresh, unprivileged login role (an API's role)."""
    role = f"tt_api_{uuid.uuid4().hex[:10]}"
    database = make_url(db_engine.url).database
    await run(
        db_engine,
        f"CREATE ROLE {role} LOGIN PASSWORD 'api'",
        f'GRANT CONNECT ON DATABASE "{database}" TO {role}',
        f"GRANT USAGE ON SCHEMA dbos TO {role}",
        f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA dbos TO {role}",
    )
    url = make_url(db_engine.url).set(username=role, password="api")
    engine = create_engine(url.render_as_string(hide_password=False))
    try:
        yield engine
    finally:
        await engine.dispose()
        await run(
            db_engine,
            f"REVOKE ALL ON ALL TABLES IN SCHEMA dbos FROM {role}",
            f"REVOKE ALL ON SCHEMA dbos FROM {role}",
            f'REVOKE ALL ON DATABASE "{database}" FROM {role}',
            f"DROP ROLE {role}",
        )


async def test_a_migrated_schema_admits(db_engine: AsyncEngine) -> None:
    assert await DbosAdmission(db_engine, cache_s=0).refusal() is None


async def test_rights_revoked_from_the_api_role_refuse_admission(
    db_engine: AsyncEngine, role_engine: AsyncEngine
) -> None:
    role = make_url(role_engine.url).username
    probe = DbosAdmission(role_engine, cache_s=0)
    assert await probe.refusal() is None
    await run(db_engine, f"REVOKE INSERT ON dbos.workflow_status FROM {role}")
    refusal = await probe.refusal()
    assert refusal is not None
    assert refusal.cause == "no_privilege"
    assert "dbos.workflow_status" in refusal.message
    await run(db_engine, f"REVOKE USAGE ON SCHEMA dbos FROM {role}")
    refusal = await probe.refusal()
    assert refusal is not None
    assert (refusal.cause, refusal.message) == (
        "no_privilege",
        "this database role may not use the schema `dbos`",
    )


async def test_a_schema_behind_a_missing_table_or_no_schema_refuse_admission(
    db_engine: AsyncEngine,
) -> None:
    probe = DbosAdmission(db_engine, cache_s=0)
    await run(db_engine, "UPDATE dbos.dbos_migrations SET version = version - 1")
    behind = await probe.refusal()
    assert behind is not None
    assert behind.cause == "schema_behind"
    assert f"this release needs {probe.required_version}" in behind.message
    await run(db_engine, "UPDATE dbos.dbos_migrations SET version = version + 1")

    await run(db_engine, "ALTER TABLE dbos.workflow_input RENAME TO workflow_input_old")
    gone = await probe.refusal()
    assert gone is not None
    assert (gone.cause, "lacks workflow_input" in gone.message) == ("schema_missing", True)

    await run(db_engine, "DROP SCHEMA dbos CASCADE")
    missing = await probe.refusal()
    assert missing is not None
    assert missing.cause == "schema_missing"
    assert "run `twintrack migrate`" in missing.message


async def test_its_answer_is_cached_for_a_moment(db_engine: AsyncEngine) -> None:
    probe = DbosAdmission(db_engine, cache_s=60)
    assert await probe.refusal() is None
    await run(db_engine, "DROP SCHEMA dbos CASCADE")
    assert await probe.refusal() is None  # still the cached answer
    probe.forget()
    refused = await probe.refusal()
    assert refused is not None
    assert refused.cause == "schema_missing"
