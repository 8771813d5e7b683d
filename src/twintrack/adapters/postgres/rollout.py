"""The live rollout in Postgres (`rollout_state`, `rollout_history`), its LISTEN/NOTIFY feed, and
the rollout guard's figures and verdicts (`rollout_guard_verdicts`).

A change is one transaction: lock the single state row, write the new version, append it to the
history and NOTIFY `twintrack_rollout` (delivered at commit), so two operators changing it at
once are serialised and every listener re-reads a committed state. NOTIFY is only a hint: the
listener calls back after each reconnect too, and `LiveRollout` re-reads on a timer anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import asyncpg
import structlog
from sqlalchemy import func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres.commands import _ListenerConnection, listener_connect_params
from twintrack.adapters.postgres.tables import (
    GuardVerdictRow,
    RolloutHistoryRow,
    RolloutStateRow,
)
from twintrack.core.guard import CohortFigures, GuardVerdict, Verdict, WindowFigures
from twintrack.core.live_rollout import (
    RolloutChange,
    RolloutState,
    RolloutSuperseded,
    Switches,
)
from twintrack.domain.execution import Track

log = structlog.get_logger()

CHANNEL = "twintrack_rollout"
APPLICATION_NAME = "twintrack-rollout"


def _state(row: RolloutStateRow | RolloutHistoryRow) -> RolloutState:
    return RolloutState(
        switches=Switches(
            row.enable_dbos,
            row.rollout_percent,
            row.events_backend,
            shadow_percent=row.shadow_percent,
            fallback_to_kafka=row.fallback_to_kafka,
        ),
        version=row.version,
        changed_at=row.changed_at,
        changed_by=row.changed_by,
        reason=row.reason,
    )


def _history(state_row: RolloutStateRow) -> dict[str, Any]:
    phases = _state(state_row).switches.phases()
    return {
        "version": state_row.version,
        "changed_at": state_row.changed_at,
        "changed_by": state_row.changed_by,
        "reason": state_row.reason,
        "enable_dbos": state_row.enable_dbos,
        "rollout_percent": state_row.rollout_percent,
        "events_backend": state_row.events_backend,
        "shadow_percent": state_row.shadow_percent,
        "fallback_to_kafka": state_row.fallback_to_kafka,
        "kafka_phase": phases[Track.KAFKA],
        "dbos_phase": phases[Track.DBOS],
    }


class PostgresRolloutStore:
    """`core.live_rollout.RolloutStateStore` on the single `rollout_state` row."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def seed(self, initial: Switches, *, changed_by: str, reason: str) -> RolloutState:
        async with self._sessions.begin() as session:
            inserted = await session.scalar(
                pg_insert(RolloutStateRow)
                .values(
                    id=1,
                    enable_dbos=initial.enable_dbos,
                    rollout_percent=initial.rollout_percent,
                    events_backend=initial.events_backend,
                    shadow_percent=initial.shadow_percent,
                    fallback_to_kafka=initial.fallback_to_kafka,
                    version=1,
                    changed_by=changed_by,
                    reason=reason,
                )
                .on_conflict_do_nothing(index_elements=["id"])
                .returning(RolloutStateRow.id)
            )
            row = await session.get_one(RolloutStateRow, 1)
            if inserted is not None:
                await session.execute(insert(RolloutHistoryRow).values(**_history(row)))
                log.info("rollout state seeded from the environment", version=row.version)
            return _state(row)

    async def load(self) -> RolloutState | None:
        async with self._sessions() as session:
            row = await session.get(RolloutStateRow, 1)
            return None if row is None else _state(row)

    async def change(
        self,
        change: RolloutChange,
        *,
        changed_by: str,
        reason: str,
        expected_version: int | None = None,
    ) -> RolloutState:
        async with self._sessions.begin() as session:
            row = await session.scalar(
                select(RolloutStateRow).where(RolloutStateRow.id == 1).with_for_update()
            )
            if row is None:
                raise LookupError("no rollout state yet: start an API process or migrate first")
            if expected_version is not None and row.version != expected_version:
                raise RolloutSuperseded(expected_version, _state(row))
            switches = change.apply(_state(row).switches)
            row.enable_dbos = switches.enable_dbos
            row.rollout_percent = switches.rollout_percent
            row.events_backend = switches.events_backend
            row.shadow_percent = switches.shadow_percent
            row.fallback_to_kafka = switches.fallback_to_kafka
            row.version = row.version + 1
            row.changed_at = (await session.execute(select(func.now()))).scalar_one()
            row.changed_by = changed_by
            row.reason = reason
            await session.flush()
            await session.execute(insert(RolloutHistoryRow).values(**_history(row)))
            await session.execute(select(func.pg_notify(CHANNEL, str(row.version))))
            return _state(row)

    async def history(self, limit: int = 20) -> list[RolloutState]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(RolloutHistoryRow).order_by(RolloutHistoryRow.id.desc()).limit(limit)
            )
            return [_state(row) for row in rows]


class PostgresRolloutFeed:
    """LISTEN on `twintrack_rollout` over one dedicated asyncpg connection, kept up with
    backoff (as the command channel's listener): `on_change` after each notification and after
    each (re)connect, since a change committed while disconnected sent its news to nobody."""

    def __init__(
        self,
        database_url: str,
        *,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 5.0,
        health_check_interval_s: float = 10.0,
    ) -> None:
        self._dsn, self._kwargs = listener_connect_params(database_url, APPLICATION_NAME)
        self._kwargs.setdefault("timeout", 10.0)
        self._min_s, self._max_s = reconnect_min_s, reconnect_max_s
        self._health_s = health_check_interval_s
        self._connection: _ListenerConnection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, on_change: Callable[[], None]) -> None:
        """Listen now (a bad URL fails loudly here), then keep listening in the background."""
        if self._task is not None:
            return
        lost = await self._listen(on_change)
        self._task = asyncio.create_task(self._supervise(on_change, lost), name=APPLICATION_NAME)

    async def _listen(self, on_change: Callable[[], None]) -> asyncio.Event:
        connection = cast(_ListenerConnection, await asyncpg.connect(self._dsn, **self._kwargs))
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _c: lost.set())
            await connection.add_listener(CHANNEL, lambda _c, _pid, _ch, _payload: on_change())
        except BaseException:
            connection.terminate()
            raise
        self._connection = connection
        on_change()
        return lost

    async def _supervise(self, on_change: Callable[[], None], lost: asyncio.Event) -> None:
        while True:
            await self._until_lost(lost)
            await self._drop()
            log.warning("rollout listener lost; reconnecting")
            delay = self._min_s
            while True:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                try:
                    lost = await self._listen(on_change)
                    break
                except Exception as exc:
                    log.warning("rollout listener reconnect failed", error=repr(exc))
                    delay = min(delay * 2, self._max_s)

    async def _until_lost(self, lost: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._health_s):
                    await lost.wait()
                return
            connection = self._connection
            try:
                assert connection is not None
                await connection.fetchval("SELECT 1", timeout=5.0)
            except Exception:
                return

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None or connection.is_closed():
            return
        try:
            await connection.close(timeout=5.0)
        except Exception:
            connection.terminate()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()


# Finished in the window, unfinished (to count the stuck), or fallen back to Kafka at admission
# in the window (DBOS failures, whatever track they ran on): each indexed. A fallback runs on the
# Kafka track but belongs to the DBOS cohort: it is only ever a DBOS failure (`fallbacks`), never
# a Kafka sample, or a DBOS outage would raise the Kafka baseline it is compared with.
_FIGURES = text(
    """
    WITH bounds AS (
        SELECT now() AS now,
               now() - make_interval(secs => :window_s) AS since,
               now() - make_interval(secs => :stuck_s) AS stuck_before
    )
    SELECT b.now, e.track,
        count(*) FILTER (
            WHERE e.status IN ('completed', 'failed') AND e.finished_at >= b.since
              AND e.fallback_reason IS NULL
        ) AS finished,
        count(*) FILTER (
            WHERE e.status = 'failed' AND e.finished_at >= b.since AND e.fallback_reason IS NULL
        ) AS failed,
        percentile_disc(0.99) WITHIN GROUP (
            ORDER BY extract(epoch FROM e.finished_at - e.created_at)
        ) FILTER (
            WHERE e.status = 'completed' AND e.finished_at >= b.since
              AND e.fallback_reason IS NULL
        ) AS p99_s,
        count(*) FILTER (
            WHERE e.status IN ('queued', 'running')
              AND coalesce(e.queued_at, e.created_at) < b.stuck_before
              AND e.fallback_reason IS NULL
        ) AS stuck,
        count(*) FILTER (
            WHERE e.fallback_reason IS NOT NULL AND e.created_at >= b.since
        ) AS fallbacks
    FROM bounds b
    LEFT JOIN executions e
      ON ((e.finished_at >= b.since AND e.finished_at IS NOT NULL)
          OR e.status IN ('queued', 'running')
          OR (e.fallback_reason IS NOT NULL AND e.created_at >= b.since))
      AND e.shadow_of IS NULL
    GROUP BY b.now, e.track
    """
)


class PostgresGuardStore:
    """`core.guard.GuardStore`: figures from the executions table, verdicts in their own."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def figures(self, *, window_s: float, stuck_after_s: float) -> WindowFigures:
        async with self._sessions() as session:
            rows = (
                await session.execute(_FIGURES, {"window_s": window_s, "stuck_s": stuck_after_s})
            ).all()
        now = rows[0].now if rows else await self._now()
        cohorts = {t: CohortFigures(t, 0, 0, None, 0) for t in Track}
        fallbacks = 0
        for row in rows:
            if row.track is None:
                continue
            track = Track(row.track)
            fallbacks += int(row.fallbacks)
            cohorts[track] = CohortFigures(
                track=track,
                finished=int(row.finished),
                failed=int(row.failed),
                p99_s=None if row.p99_s is None else float(row.p99_s),
                stuck=int(row.stuck),
            )
        cohorts[Track.DBOS] = replace(cohorts[Track.DBOS], fallbacks=fallbacks)
        return WindowFigures(now=now, cohorts=cohorts)

    async def _now(self) -> Any:
        async with self._sessions() as session:
            return await session.scalar(select(func.now()))

    async def record(self, verdict: GuardVerdict) -> GuardVerdict:
        async with self._sessions.begin() as session:
            decided_at = await session.scalar(
                insert(GuardVerdictRow)
                .values(
                    verdict=verdict.verdict.value,
                    reason=verdict.reason,
                    consecutive_failures=verdict.consecutive_failures,
                    rolled_back=verdict.rolled_back,
                    figures=verdict.figures,
                )
                .returning(GuardVerdictRow.decided_at)
            )
        return GuardVerdict(
            verdict.verdict,
            verdict.reason,
            verdict.consecutive_failures,
            verdict.rolled_back,
            verdict.figures,
            decided_at,
        )

    async def recent(self, limit: int = 20) -> list[GuardVerdict]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(GuardVerdictRow).order_by(GuardVerdictRow.id.desc()).limit(limit)
            )
            return [
                GuardVerdict(
                    Verdict(r.verdict),
                    r.reason,
                    r.consecutive_failures,
                    r.rolled_back,
                    dict(r.figures),
                    r.decided_at,
                )
                for r in rows
            ]
