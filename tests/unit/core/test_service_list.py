"""The executions list's filters: children of a parent, the members of a tree, a half-open time
range; each combined with the others and with cursor pages, which must still give every match
exactly once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from tests.unit.core.support import OWNER
from twintrack.bootstrap import MemoryContainer
from twintrack.core.records import ExecutionRecord
from twintrack.domain.execution import EventsBackend, ExecutionStatus, Track

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FLOW = {"name": "f", "nodes": [], "edges": []}


async def _made(
    app: MemoryContainer, minute: int, parent: ExecutionRecord | None = None
) -> ExecutionRecord:
    """An execution created `minute` minutes after T0 (set directly: the clock is not ours)."""
    flow = await app.stores.flows.create(OWNER, "f", FLOW)
    record = await app.stores.executions.create(
        owner_id=OWNER,
        flow_id=flow.id,
        flow_version=flow.version,
        track=Track.KAFKA,
        events_backend=EventsBackend.KAFKA,
        parent_id=None if parent is None else parent.id,
    )
    moved = record.model_copy(update={"created_at": T0 + timedelta(minutes=minute)})
    app.stores.executions.records[record.id] = moved
    return moved


async def _ids(app: MemoryContainer, limit: int = 50, **filters: Any) -> list[str]:
    """Every matching id, newest first, read through pages of `limit`."""
    seen: list[str] = []
    cursor = None
    while True:
        page = await app.service.list(OWNER, limit=limit, cursor=cursor, **filters)
        seen += [r.id for r in page.items]
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


async def test_parent_lists_direct_children_and_root_the_whole_tree(app: MemoryContainer) -> None:
    root = await _made(app, 0)
    kids = [await _made(app, m, parent=root) for m in (1, 2, 3)]
    grandchild = await _made(app, 4, parent=kids[0])
    other = await _made(app, 5)

    assert await _ids(app, parent_id=root.id) == [k.id for k in reversed(kids)]
    tree = [grandchild.id, *(k.id for k in reversed(kids)), root.id]
    assert await _ids(app, limit=2, root_id=root.id) == tree
    assert await _ids(app, root_id=other.id) == [other.id]
    assert await _ids(app, parent_id=grandchild.id) == []


async def test_the_time_range_is_half_open_and_pages_within_it(app: MemoryContainer) -> None:
    made = [await _made(app, m) for m in range(10)]
    window = {
        "created_after": T0 + timedelta(minutes=2),
        "created_before": T0 + timedelta(minutes=7),
    }

    assert await _ids(app, limit=2, **window) == [r.id for r in reversed(made[2:7])]
    assert await _ids(app, created_after=T0 + timedelta(minutes=8)) == [made[9].id, made[8].id]
    assert await _ids(app, created_before=T0 + timedelta(minutes=1)) == [made[0].id]


async def test_a_time_without_a_zone_is_utc(app: MemoryContainer) -> None:
    made = [await _made(app, m) for m in range(3)]
    naive = (T0 + timedelta(minutes=1)).replace(tzinfo=None)
    assert await _ids(app, created_after=naive) == [made[2].id, made[1].id]


async def test_filters_combine(app: MemoryContainer) -> None:
    root = await _made(app, 0)
    kids = [await _made(app, m, parent=root) for m in range(1, 5)]
    await app.stores.executions.transition(kids[1].id, ExecutionStatus.QUEUED)

    late_children = await _ids(app, parent_id=root.id, created_after=T0 + timedelta(minutes=2))
    assert late_children == [kids[3].id, kids[2].id, kids[1].id]
    queued = await _ids(app, root_id=root.id, status=ExecutionStatus.QUEUED)
    assert queued == [kids[1].id]
    assert await _ids(app, root_id=root.id, track=Track.DBOS) == []


async def test_an_instant_at_the_edge_of_the_calendar_is_clamped(app: MemoryContainer) -> None:
    made = await _made(app, 0)
    earliest = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))  # before year 1 in UTC
    latest = datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-14)))
    assert await _ids(app, created_after=earliest, created_before=latest) == [made.id]
