"""Read-only queries only the operator console needs: per-track health over a recent window,
and a key's principal from its SHA-256 (what a console session remembers instead of the key).

Kept apart from the stores the use cases depend on: nothing here writes, and nothing in core
needs it. The window figures come from the executions table itself (created_at → finished_at),
so the console needs no Prometheus to show them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, and_, extract, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres.keys import Principal
from twintrack.adapters.postgres.tables import NON_TERMINAL_SQL, ApiKeyRow, ExecutionRow
from twintrack.domain.execution import ExecutionStatus, Track


@dataclass(frozen=True)
class TrackHealth:
    """One track: what is unfinished now, and what finished in the last `window_s` seconds."""

    track: Track
    window_s: float
    unfinished: dict[ExecutionStatus, int] = field(default_factory=dict)
    oldest_unfinished_age_s: float | None = None
    finished: dict[ExecutionStatus, int] = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def unfinished_total(self) -> int:
        return sum(self.unfinished.values())

    @property
    def drained(self) -> bool:
        return self.unfinished_total == 0

    @property
    def finished_total(self) -> int:
        return sum(self.finished.values())

    @property
    def throughput_per_s(self) -> float:
        return self.finished_total / self.window_s if self.window_s > 0 else 0.0

    @property
    def error_rate(self) -> float | None:
        """Failed among finished in the window (stops are an operator's choice, not errors)."""
        total = self.finished_total
        return None if total == 0 else self.finished.get(ExecutionStatus.FAILED, 0) / total


class ConsoleQueries:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def principal_by_key_hash(self, key_hash: str) -> Principal | None:
        """The owner behind a (not revoked) key, by the hash the key store keeps."""
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(ApiKeyRow.owner_id, ApiKeyRow.is_admin).where(
                        ApiKeyRow.key_hash == key_hash, ApiKeyRow.revoked_at.is_(None)
                    )
                )
            ).one_or_none()
        return None if row is None else Principal(owner_id=row.owner_id, is_admin=row.is_admin)

    async def track_health(self, owner_id: str | None, window_s: float) -> dict[Track, TrackHealth]:
        """Per track, for one owner or (None) the whole cluster.

        Unfinished counts use the partial index on unfinished executions (its predicate is
        repeated literally); ages and the window come from the database clock.
        """
        scope: list[ColumnElement[bool]] = [ExecutionRow.shadow_of.is_(None)]  # not shadows
        if owner_id is not None:
            scope.append(ExecutionRow.owner_id == owner_id)
        unfinished: dict[Track, dict[ExecutionStatus, int]] = {t: {} for t in Track}
        oldest: dict[Track, float | None] = dict.fromkeys(Track)
        finished: dict[Track, dict[ExecutionStatus, int]] = {t: {} for t in Track}
        p50: dict[Track, float | None] = dict.fromkeys(Track)
        p99: dict[Track, float | None] = dict.fromkeys(Track)
        age = extract("epoch", func.now() - func.min(ExecutionRow.created_at))
        since = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, window_s)
        latency_ms = extract("epoch", ExecutionRow.finished_at - ExecutionRow.created_at) * 1000
        async with self._sessions() as session:
            rows = await session.execute(
                select(ExecutionRow.track, ExecutionRow.status, func.count(), age)
                .where(text(NON_TERMINAL_SQL), *scope)
                .group_by(ExecutionRow.track, ExecutionRow.status)
            )
            for track, status, n, seconds in rows:
                unfinished[track][status] = n
                previous = oldest[track]
                oldest[track] = max(previous or 0.0, float(seconds))
            recent = and_(ExecutionRow.finished_at >= since, *scope)
            done = await session.execute(
                select(ExecutionRow.track, ExecutionRow.status, func.count())
                .where(recent)
                .group_by(ExecutionRow.track, ExecutionRow.status)
            )
            for track, status, n in done:
                finished[track][status] = n
            quantiles = await session.execute(
                select(
                    ExecutionRow.track,
                    func.percentile_cont(0.5).within_group(latency_ms),
                    func.percentile_cont(0.99).within_group(latency_ms),
                )
                .where(recent, ExecutionRow.status == ExecutionStatus.COMPLETED)
                .group_by(ExecutionRow.track)
            )
            for track, q50, q99 in quantiles:
                p50[track] = None if q50 is None else float(q50)
                p99[track] = None if q99 is None else float(q99)
        return {
            t: TrackHealth(
                track=t,
                window_s=window_s,
                unfinished=unfinished[t],
                oldest_unfinished_age_s=oldest[t],
                finished=finished[t],
                p50_ms=p50[t],
                p99_ms=p99[t],
            )
            for t in Track
        }
