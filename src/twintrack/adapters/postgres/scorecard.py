"""The scorecard's samples from Postgres: one row per real execution that finished in the window
(the finished_at index), with its recoveries, whether a reroute moved it, and its shadow's
outcome. The figures are computed in core/scorecard.py, one rule for every store."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ARRAY, Text, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.core.recovery_ports import Reason
from twintrack.core.scorecard import FALLBACK, NOT_RECOVERIES, REROUTED, ROUTED, ExecutionSample
from twintrack.domain.execution import ExecutionStatus, Track

_SAMPLES = text(
    """
    SELECT now() AS now, e.track, e.status,
        extract(epoch FROM e.finished_at - e.created_at) AS total_s,
        extract(epoch FROM e.started_at - e.queued_at) AS queue_s,
        (SELECT count(*) FROM execution_recoveries r
          WHERE r.execution_id = e.id AND NOT (r.reason = ANY(:not_recoveries))) AS recoveries,
        EXISTS (SELECT 1 FROM execution_recoveries r
          WHERE r.execution_id = e.id AND r.reason = :rerouted) AS rerouted,
        e.fallback_reason IS NOT NULL AS fell_back,
        s.status AS shadow
    FROM executions e
    LEFT JOIN shadow_runs s ON s.original_id = e.id
    WHERE e.finished_at IS NOT NULL
      AND e.finished_at >= now() - make_interval(secs => :window_s)
      AND e.shadow_of IS NULL
    """
).bindparams(bindparam("not_recoveries", type_=ARRAY(Text())))


class PostgresScorecardStore:
    """`core.scorecard.ScorecardStore`."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def samples(self, window_s: float) -> tuple[datetime, list[ExecutionSample]]:
        params = {
            "window_s": window_s,
            "not_recoveries": sorted(r.value for r in NOT_RECOVERIES),
            "rerouted": Reason.REROUTED.value,
        }
        async with self._sessions() as session:
            rows = (await session.execute(_SAMPLES, params)).all()
            now = rows[0].now if rows else (await session.execute(text("SELECT now()"))).scalar()
        samples = [
            ExecutionSample(
                track=Track(row.track),
                cohort=REROUTED if row.rerouted else FALLBACK if row.fell_back else ROUTED,
                status=ExecutionStatus(row.status),
                total_s=None if row.total_s is None else float(row.total_s),
                queue_s=None if row.queue_s is None else float(row.queue_s),
                recoveries=int(row.recoveries),
                shadow=row.shadow,
            )
            for row in rows
        ]
        assert isinstance(now, datetime)
        return now, samples
