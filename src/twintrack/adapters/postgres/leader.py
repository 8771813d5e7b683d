"""Leader election through a Postgres session advisory lock, held on a dedicated connection.

Every process that may sweep runs one; whoever holds the lock leads until its connection
ends (crash included: Postgres releases the lock with the session), then another takes over.

The lock belongs to a database session, and a pooled connection outlives its checkout: so the
connection is never given back to the pool holding the lock. Releasing unlocks first, and a
connection whose state is unknown (the unlock failed, the server went away) is invalidated, i.e.
really closed, which ends the session and its lock. Each `lead` also checks in `pg_locks` that
this session still holds the lock, so a lost lock (its session ended) is noticed at once.
"""

from __future__ import annotations

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = structlog.get_logger()

# How pg_locks shows a bigint advisory lock: high and low 32 bits, objsubid 1.
_HELD = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND objsubid = 1"
    " AND classid = ((CAST(:key AS bigint) >> 32) & 4294967295)::oid"
    " AND objid = (CAST(:key AS bigint) & 4294967295)::oid)"
)


class AdvisoryLeader:
    def __init__(self, db_engine: AsyncEngine, key: int, name: str) -> None:
        self._db_engine = db_engine
        self.key = key
        self.name = name
        self._conn: AsyncConnection | None = None

    async def lead(self) -> bool:
        """True while this process holds the lock (taking it when it is free)."""
        try:
            if self._conn is not None:
                if await self._conn.scalar(_HELD, {"key": self.key}):
                    return True
                log.warning("leader lock lost", role=self.name)
                await self.release()
                return False
            conn = await self._db_engine.connect()
            try:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                taken = await conn.scalar(select(func.pg_try_advisory_lock(self.key)))
            except BaseException:
                await conn.invalidate()
                await conn.close()
                raise
            if taken:
                self._conn = conn
                log.info("leading", role=self.name)
                return True
            await conn.close()  # the lock was not taken: safe to pool
        except Exception:
            log.warning("leader lock connection failed", role=self.name, exc_info=True)
            await self.release()
        return False

    async def release(self) -> None:
        """Give the lock up; the connection goes back to the pool only once it is unlocked."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.scalar(select(func.pg_advisory_unlock(self.key)))
        except Exception:
            log.debug("unlock failed; closing the session instead", role=self.name, exc_info=True)
            try:
                await conn.invalidate()
            except Exception:
                log.debug("invalidating leader connection failed", exc_info=True)
        try:
            await conn.close()
        except Exception:
            log.debug("closing leader connection failed", role=self.name, exc_info=True)
