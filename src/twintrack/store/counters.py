"""CounterStore: the durable counters behind the `tally` node.

Each increment is its own committed transaction (one atomic upsert), so the count is exactly the
number of increments that happened: the side effect that exactly-once tests count against.
CounterStore satisfies `twintrack.nodes.base.Counters`, the protocol the `tally` node calls.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from twintrack.store.tables import TallyCounterRow


class CounterStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def increment(self, name: str) -> int:
        """Add one to the counter `name` (created at 0 if new) and return the new count."""
        upsert = (
            insert(TallyCounterRow)
            .values(name=name, count=1)
            .on_conflict_do_update(
                index_elements=[TallyCounterRow.name],
                set_={"count": TallyCounterRow.count + 1, "updated_at": func.now()},
            )
            .returning(TallyCounterRow.count)
        )
        async with self._sessions.begin() as session:
            count: int | None = await session.scalar(upsert)
        assert count is not None
        return count

    async def get(self, name: str) -> int:
        """The current count; 0 for a counter never incremented."""
        async with self._sessions() as session:
            count = await session.scalar(
                select(TallyCounterRow.count).where(TallyCounterRow.name == name)
            )
        return count or 0
