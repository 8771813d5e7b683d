"""The shadow runs' Postgres adapters (adapters/postgres/shadow.py, scorecard.py) on a real
server: candidates are completed real roots not yet shadowed, a reservation is at most once,
shadows are nobody's in the owner's reads, the ledger keeps only the newest entries, and the
scorecard's samples carry each execution's cohort and shadow outcome."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres import PostgresExecutionStore, PostgresFlowStore
from twintrack.adapters.postgres.scorecard import PostgresScorecardStore
from twintrack.adapters.postgres.shadow import PostgresShadowStore
from twintrack.core.errors import NotFound
from twintrack.core.scorecard import ROUTED, score
from twintrack.core.shadow import MATCHED, MISMATCHED, Mismatch, ShadowOutcomes, ShadowRun
from twintrack.domain.execution import EventsBackend, Track
from twintrack.domain.shadow import shadow_execution_id

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]


def _run(original: str) -> ShadowRun:
    return ShadowRun(original, shadow_execution_id(original), "o", "fl", 1, Track.KAFKA, Track.DBOS)


def _mismatch(original: str) -> Mismatch:
    return Mismatch(
        original,
        shadow_execution_id(original),
        "fl",
        1,
        Track.KAFKA,
        Track.DBOS,
        "-a\n+b",
        ["  0 execution.created {}"],
        ["  0 execution.created {}"],
        {"t": "why"},
    )


async def test_candidates_reservations_visibility_ledger_and_samples(
    session_factory: Sessions,
) -> None:
    flows = PostgresFlowStore(session_factory)
    executions = PostgresExecutionStore(session_factory)
    flow = await flows.create("o", "f", {"name": "f", "nodes": [], "edges": []})

    async def made(shadow_of: str | None = None, execution_id: str | None = None) -> str:
        record = await executions.create(
            owner_id="o",
            flow_id=flow.id,
            flow_version=flow.version,
            track=Track.DBOS if shadow_of else Track.KAFKA,
            events_backend=EventsBackend.KAFKA,
            shadow_of=shadow_of,
            execution_id=execution_id,
        )
        return record.id

    originals = [await made() for _ in range(3)]
    shadow = await made(originals[0], shadow_execution_id(originals[0]))
    async with session_factory.begin() as session:
        await session.execute(
            text(
                "UPDATE executions SET status = 'completed', queued_at = now() - interval '3 s',"
                " started_at = now() - interval '2 s', finished_at = now()"
            )
        )
    store = PostgresShadowStore(session_factory)

    found = await store.candidates(lookback_s=60, after=None, limit=10)
    assert sorted(r.id for r in found) == sorted(originals)  # the shadow is no candidate
    assert await asyncio.gather(*(store.reserve(_run(originals[0])) for _ in range(3))) in (
        [True, False, False],
        [False, True, False],
        [False, False, True],
    )
    again = await store.candidates(lookback_s=60, after=None, limit=10)
    assert sorted(r.id for r in again) == sorted(originals[1:])
    last = again[-1]
    assert last.finished_at is not None
    assert await store.candidates(lookback_s=60, after=(last.finished_at, last.id), limit=10) == []

    # Nobody's: the owner neither lists nor reads it; the workers (no owner) do.
    assert shadow not in {r.id for r in (await executions.list("o")).items}
    with pytest.raises(NotFound):
        await executions.get(shadow, "o")
    assert (await executions.get(shadow)).shadow_of == originals[0]

    for original in originals[1:]:
        assert await store.reserve(_run(original))
    assert sorted(r.original_id for r in await store.running()) == sorted(originals)
    await store.finish(originals[0], MATCHED, {}, None, ledger_size=2)
    for original in originals[1:]:
        await store.finish(original, MISMATCHED, {"t": "why"}, _mismatch(original), ledger_size=1)
    ledger = await store.mismatches(10)
    assert [m.original_id for m in ledger] == [originals[2]]  # capped at the newest one
    assert ledger[0].replayed == {"t": "why"}
    assert await store.outcomes(60) == ShadowOutcomes(3, 2)
    assert await store.running() == []

    now, samples = await PostgresScorecardStore(session_factory).samples(60)
    card = score(samples, window_s=60, now=now)
    kafka = card.row(Track.KAFKA, ROUTED)
    assert (kafka.executions, kafka.shadow_runs, kafka.shadow_matches) == (3, 3, 1)
    assert kafka.queue_p50_s == pytest.approx(1.0, abs=0.01)
    assert card.row(Track.DBOS).executions == 0  # shadows are not executions of the card
