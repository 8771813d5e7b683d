"""DBOS-streams writes PostgreSQL refuses for one execution: blamed on that execution only.

The writer commits everything queued as one transaction, so one execution's refused row fails
the whole batch; it then writes each event alone, so the other executions' events in that batch
are written (no gap) and only the refused execution's flush (or waiting publish) hears of it.
The fault is real: a trigger makes PostgreSQL refuse this one workflow's stream rows, as a
database that refuses writes would.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tests.integration.kafka.test_kafka_events import collect, event
from twintrack.adapters.dbos.enqueue import enqueue_workflow
from twintrack.adapters.dbos.events import DbosStreamEventBus
from twintrack.adapters.dbos.runtime import DbosConfig
from twintrack.adapters.dbos.system_db import STREAM_KEY
from twintrack.adapters.postgres.db import one_statement
from twintrack.domain.ids import new_execution_id

Sessions = async_sessionmaker[AsyncSession]
EVENTS = 4  # per execution in the shared batch: indices 1..EVENTS, the last one terminal

_REFUSE = (
    "CREATE FUNCTION refuse_stream() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN RAISE EXCEPTION 'stream of % refused by the test', NEW.workflow_uuid; END $$",
    "CREATE TRIGGER refuse_stream BEFORE INSERT ON dbos.streams"
    " FOR EACH ROW WHEN (NEW.workflow_uuid = '{ex}') EXECUTE FUNCTION refuse_stream()",
)


async def _sql(engine: AsyncEngine, *statements: str) -> None:
    async with engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))


async def _prepared(config: DbosConfig, sessions: Sessions) -> str:
    """An execution id whose workflow exists, parked DELAYED, as a DBOS-streams create makes it
    (its stream rows need the workflow)."""
    execution_id = new_execution_id()
    await enqueue_workflow(
        one_statement(sessions),
        execution_id=execution_id,
        traceparent=None,
        application_version=config.application_version,
        application_name=config.app_name,
        delay_s=3600,
    )
    return execution_id


async def _stream_indices(engine: AsyncEngine, execution_id: str) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.scalars(
            text(
                "SELECT value FROM dbos.streams WHERE workflow_uuid = :id AND key = :key"
                ' ORDER BY "offset"'
            ),
            {"id": execution_id, "key": STREAM_KEY},
        )
        values = [json.loads(v) for v in rows]
    return [int(v["index"]) for v in values if isinstance(v, dict)]  # not the close marker


@pytest_asyncio.fixture
async def bus(database_url: str, session_factory: Sessions) -> AsyncIterator[DbosStreamEventBus]:
    config = DbosConfig(
        app_name="faults",
        system_database_url=database_url,
        application_version="faults",
        queue_concurrency=None,
        worker_concurrency=1,
        polling_interval_s=1.0,
    )
    bus = DbosStreamEventBus(config, session_factory)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


@pytest.mark.timeout(60)
async def test_a_refused_stream_write_is_blamed_on_its_execution_only(
    bus: DbosStreamEventBus, session_factory: Sessions, db_engine: AsyncEngine
) -> None:
    a = await _prepared(bus.config, session_factory)
    b = await _prepared(bus.config, session_factory)
    await bus.publish(event(a, 0), wait=True)
    await bus.publish(event(b, 0), wait=True)
    await _sql(db_engine, *(s.format(ex=b) for s in _REFUSE))

    # Interleaved, and none of these publishes yields to the loop: the writer wakes to all of
    # them at once and commits them as one batch, which B's first row makes fail.
    for index in range(1, EVENTS + 1):
        await bus.publish(event(a, index, last=EVENTS))
        await bus.publish(event(b, index))
    with pytest.raises(RuntimeError, match=f"1 execution\\(s\\) .* {b} first") as lost:
        await bus.flush(b)
    assert "refused by the test" in repr(lost.value.__cause__)
    await bus.flush(a)  # A shared B's failed batch, and was written all the same
    await bus.flush()  # B's loss was reported once, to B: nobody else hears of it

    events = await collect(bus.subscribe(a))
    assert [e.index for e in events] == list(range(EVENTS + 1))
    assert events[-1].type.is_terminal
    assert await _stream_indices(db_engine, b) == [0]  # nothing of B half-written

    # A caller waiting on its own write hears of its own refusal, and only it.
    with pytest.raises(Exception, match="refused by the test"):
        await bus.publish(event(b, 1), wait=True)
    await _sql(db_engine, "DROP TRIGGER refuse_stream ON dbos.streams")
    await bus.publish(event(b, 1), wait=True)  # the bus is not poisoned once PostgreSQL accepts
    await bus.flush()
    assert await _stream_indices(db_engine, b) == [0, 1]
