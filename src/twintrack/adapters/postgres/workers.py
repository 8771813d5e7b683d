"""The worker registry: every worker process, the tracks it serves, and its last heartbeat.

Both tracks use it: operators see who is alive, and the sweeper finds workers that stopped
heartbeating (a DBOS executor that never comes back is only recovered through this).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres.tables import WorkerRow


def new_worker_id() -> str:
    """Unique per process and readable in logs: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class PostgresWorkerRegistry:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def register(self, worker_id: str, tracks: Sequence[str]) -> None:
        stmt = insert(WorkerRow).values(
            worker_id=worker_id,
            tracks=list(tracks),
            hostname=socket.gethostname(),
            pid=os.getpid(),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[WorkerRow.worker_id],
            set_={"heartbeat_at": func.now(), "stopped_at": None, "tracks": list(tracks)},
        )
        async with self._sessions.begin() as session:
            await session.execute(stmt)

    async def heartbeat(self, worker_id: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(WorkerRow)
                .where(WorkerRow.worker_id == worker_id)
                .values(heartbeat_at=func.now())
            )

    async def stopped(self, worker_id: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(WorkerRow)
                .where(WorkerRow.worker_id == worker_id)
                .values(stopped_at=func.now())
            )

    async def gone(self, silent_s: float, *, track: str, within_s: float = 3600) -> list[str]:
        """Workers of `track` that stopped, or went silent for `silent_s`, in the last
        `within_s`: the ones whose unfinished work someone else must take over."""
        recent = func.now() - text("make_interval(secs => :w)").bindparams(w=within_s)
        silent = func.now() - text("make_interval(secs => :s)").bindparams(s=silent_s)
        async with self._sessions() as session:
            rows = await session.scalars(
                select(WorkerRow.worker_id).where(
                    func.array_position(WorkerRow.tracks, track).is_not(None),
                    WorkerRow.heartbeat_at > recent,
                    (WorkerRow.stopped_at.is_not(None)) | (WorkerRow.heartbeat_at < silent),
                )
            )
            return list(rows)

    async def silent_since(self, seconds: float) -> list[tuple[str, datetime]]:
        """Workers not stopped cleanly whose last heartbeat is older than `seconds`."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(WorkerRow.worker_id, WorkerRow.heartbeat_at).where(
                    WorkerRow.stopped_at.is_(None),
                    WorkerRow.heartbeat_at
                    < func.now() - text("make_interval(secs => :s)").bindparams(s=seconds),
                )
            )
            return [(r.worker_id, r.heartbeat_at) for r in rows]
