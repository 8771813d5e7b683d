"""Leader election through a Postgres session advisory lock, held on a dedicated connection.

Every process that may sweep runs one; whoever holds the lock leads until its connection
ends (crash included: Postgres releases the lock with the session), then another takes over.
"""

from __future__ import annotations

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = structlog.get_logger()


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
                await self._conn.execute(select(1))
                return True
            conn = await self._db_engine.connect()
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            if await conn.scalar(select(func.pg_try_advisory_lock(self.key))):
                self._conn = conn
                log.info("leading", role=self.name)
                return True
            await conn.close()
        except Exception:
            log.warning("leader lock connection failed", role=self.name, exc_info=True)
            await self.release()
        return False

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:
                log.debug("closing leader connection failed", role=self.name, exc_info=True)
