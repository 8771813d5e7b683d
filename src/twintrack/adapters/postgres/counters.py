"""PostgresCounterStore: the durable counters behind the `tally` node.

Each increment is its own committed transaction, so the count is exactly the number of
increments that happened: the side effect that exactly-once tests count against. A keyed
increment (the `tally` node keys by execution/attempt/node) also records its key and result
in the same transaction, which makes it safe to retry through a database outage: a retry
whose first try committed (the connection died during COMMIT) finds the key and returns the
same count instead of counting twice. PostgresCounterStore satisfies
`twintrack.nodes.base.Counters`.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.adapters.postgres.tables import TallyCounterRow, TallyIncrementRow
from twintrack.core.transient import retry_or_abandon


class PostgresCounterStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def increment(self, name: str, *, key: str | None = None) -> int:
        """Add one to the counter `name` (created at 0 if new) and return the new count.

        With a `key`, transient database errors are retried (until DB_RETRY_DEADLINE_S, then
        InfrastructureError) and the key counts once; without one, nothing is retried, since a
        repeat could count twice.
        """
        if key is None:
            return await self._increment(name, None)
        return await retry_or_abandon(
            lambda: self._increment(name, key), what=f"tally {name!r} ({key})"
        )

    async def _increment(self, name: str, key: str | None) -> int:
        async with self._sessions.begin() as session:
            if key is not None:
                claimed = await session.scalar(
                    insert(TallyIncrementRow)
                    .values(key=key, name=name, count=0)
                    .on_conflict_do_nothing(index_elements=[TallyIncrementRow.key])
                    .returning(TallyIncrementRow.key)
                )
                if claimed is None:  # done before: the first try committed
                    done = await session.scalar(
                        select(TallyIncrementRow.count).where(TallyIncrementRow.key == key)
                    )
                    assert done is not None
                    return done
            count: int | None = await session.scalar(
                insert(TallyCounterRow)
                .values(name=name, count=1)
                .on_conflict_do_update(
                    index_elements=[TallyCounterRow.name],
                    set_={"count": TallyCounterRow.count + 1, "updated_at": func.now()},
                )
                .returning(TallyCounterRow.count)
            )
            assert count is not None
            if key is not None:
                await session.execute(
                    update(TallyIncrementRow)
                    .where(TallyIncrementRow.key == key)
                    .values(count=count)
                )
        return count

    async def get(self, name: str) -> int:
        """The current count; 0 for a counter never incremented."""
        async with self._sessions() as session:
            count = await session.scalar(
                select(TallyCounterRow.count).where(TallyCounterRow.name == name)
            )
        return count or 0
