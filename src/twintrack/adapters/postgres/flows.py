"""PostgresFlowStore: flows and their immutable versions, scoped to an owner.

Updating a flow never rewrites a version: it appends version N+1, so an execution that pinned
version N keeps running (and showing) exactly what it started with.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql import func

from twintrack.adapters.postgres.db import driver
from twintrack.adapters.postgres.pagination import newest_first, to_page
from twintrack.adapters.postgres.tables import FlowRow, FlowVersionRow
from twintrack.core.errors import NotFound
from twintrack.core.records import FlowRecord, FlowRef, FlowSummary, Page
from twintrack.domain.ids import new_flow_id

# The latest version when $3 is NULL; JSON decoded by the connection's codecs.
_GET_VERSION_SQL = """
SELECT f.id, f.owner_id, v.name, f.latest_version, f.created_at, f.updated_at, v.version,
       v.definition, v.created_at AS version_created_at
FROM flows f JOIN flow_versions v ON v.flow_id = f.id
WHERE f.id = $1 AND f.owner_id = $2 AND v.version = coalesce($3::integer, f.latest_version)
"""


def _summary(row: FlowRow) -> FlowSummary:
    return FlowSummary.model_validate(row, from_attributes=True)


class PostgresFlowStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def create(self, owner_id: str, name: str, definition: dict[str, Any]) -> FlowRef:
        """Create a flow at version 1."""
        flow_id = new_flow_id()
        async with self._sessions.begin() as session:
            session.add(FlowRow(id=flow_id, owner_id=owner_id, name=name, latest_version=1))
            await session.flush()
            session.add(
                FlowVersionRow(flow_id=flow_id, version=1, name=name, definition=definition)
            )
        return FlowRef(flow_id, 1)

    async def update(
        self, owner_id: str, flow_id: str, name: str, definition: dict[str, Any]
    ) -> int:
        """Append version N+1 and return N+1.

        The increment is an UPDATE of the flow row, which takes its row lock: concurrent updates of
        one flow queue up behind each other and each gets its own number.
        """
        async with self._sessions.begin() as session:
            version: int | None = await session.scalar(
                update(FlowRow)
                .where(FlowRow.id == flow_id, FlowRow.owner_id == owner_id)
                .values(latest_version=FlowRow.latest_version + 1, name=name, updated_at=func.now())
                .returning(FlowRow.latest_version)
            )
            if version is None:
                raise NotFound("flow", flow_id)
            session.add(
                FlowVersionRow(flow_id=flow_id, version=version, name=name, definition=definition)
            )
        return version

    async def get(self, owner_id: str, flow_id: str, version: int | None = None) -> FlowRecord:
        """A version of the flow (the latest when `version` is None).

        Every create reads one: a single statement on the driver (`db.driver`).
        """
        async with driver(self._sessions) as connection:
            row = await connection.fetchrow(_GET_VERSION_SQL, flow_id, owner_id, version)
        if row is None:
            raise NotFound("flow" if version is None else "flow version", (flow_id, version))
        return FlowRecord.model_validate(dict(row))

    async def list(
        self, owner_id: str, limit: int = 50, cursor: str | None = None
    ) -> Page[FlowSummary]:
        """The owner's flows, newest first."""
        query = newest_first(
            select(FlowRow).where(FlowRow.owner_id == owner_id),
            FlowRow.created_at,
            FlowRow.id,
            limit,
            cursor,
        )
        async with self._sessions() as session:
            rows = (await session.scalars(query)).all()
        return to_page(rows, limit, _summary, lambda r: (r.created_at, r.id))
