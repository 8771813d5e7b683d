"""The advisory-lock leader on a real PostgreSQL: a released lock is really released (never
left on a pooled connection), and a lost one is noticed at once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from twintrack.adapters.postgres.db import create_engine
from twintrack.adapters.postgres.leader import AdvisoryLeader

pytestmark = pytest.mark.integration
KEY = 0x7477696E74657374  # "twintest"


@pytest_asyncio.fixture
async def other_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """Another process's pool, as far as the lock can tell."""
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


async def _holders(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND objid = (CAST(:key AS bigint) & 4294967295)::oid"
            ),
            {"key": KEY},
        )
        return [r.pid for r in rows]


async def test_a_released_lock_is_not_kept_by_a_pooled_connection(
    db_engine: AsyncEngine, other_engine: AsyncEngine
) -> None:
    first, second = AdvisoryLeader(db_engine, KEY, "a"), AdvisoryLeader(other_engine, KEY, "b")
    assert await first.lead()
    assert not await second.lead()
    await first.release()
    # the connection went back to db_engine's pool, unlocked: someone else can lead now
    assert await _holders(other_engine) == []
    assert await second.lead()
    assert not await first.lead()
    await second.release()


async def test_a_lost_lock_is_noticed_and_taken_over(
    db_engine: AsyncEngine, other_engine: AsyncEngine
) -> None:
    first, second = AdvisoryLeader(db_engine, KEY, "a"), AdvisoryLeader(other_engine, KEY, "b")
    assert await first.lead()
    (pid,) = await _holders(other_engine)
    async with other_engine.connect() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    assert not await first.lead()  # its session ended: it knows it no longer leads
    assert await second.lead()
    await second.release()
    await first.release()
