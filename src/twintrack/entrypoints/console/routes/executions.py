"""Executions: the filtered list with live statuses and bulk stop; one execution's page with its
live log (SSE), waterfall, tree and command buttons.

Everything goes through ExecutionService with the viewer's owner id, exactly as the API does,
so the console can show nothing the viewer's key could not fetch: another owner's id is "not
found" here too.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Header, Query, Request, Response
from fastapi.responses import RedirectResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from twintrack.core.errors import NotFound
from twintrack.core.ports import EventsExpired
from twintrack.core.records import ExecutionRecord
from twintrack.core.service import Conflict, ExecutionService
from twintrack.domain.commands import Command
from twintrack.domain.events import Event
from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.entrypoints.api.ids import checked_cursor, checked_id
from twintrack.entrypoints.api.limits import StreamSlots
from twintrack.entrypoints.api.schemas import ID_RE
from twintrack.entrypoints.console.session import CurrentViewer, Viewer
from twintrack.entrypoints.console.timeline import read_available, waterfall
from twintrack.entrypoints.console.web import ConsoleRoute, page, templates

router = APIRouter(prefix="/ui/executions", route_class=ConsoleRoute, include_in_schema=False)

PAGE_SIZE = 25
PING_S = 15
MAX_INDEX = 2**63 - 1


def _service(request: Request) -> ExecutionService:
    service: ExecutionService = request.app.state.container.service
    return service


def _enum_or_none(kind: type[Track] | type[ExecutionStatus], value: str | None) -> Any:
    try:
        return kind(value) if value else None
    except ValueError:
        return None


def _id_or_none(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


def _moment(value: str | None) -> datetime | None:
    """A datetime-local field's value (no zone: the console shows and takes UTC)."""
    try:
        return datetime.fromisoformat(value.strip()) if value and value.strip() else None
    except ValueError:
        return None


@router.get("")
async def list_page(
    request: Request,
    viewer: CurrentViewer,
    track: str | None = None,
    status: str | None = None,
    flow_id: str | None = None,
    parent_id: str | None = None,
    root_id: str | None = None,
    created_after: str | None = None,
    created_before: str | None = None,
    cursor: str | None = None,
    notice: str | None = None,
) -> Response:
    filters = {
        "track": track or "",
        "status": status or "",
        "flow_id": flow_id or "",
        "parent_id": parent_id or "",
        "root_id": root_id or "",
        "created_after": created_after or "",
        "created_before": created_before or "",
    }
    ids = {"flow_id": _id_or_none(flow_id), "parent_id": _id_or_none(parent_id)}
    ids["root_id"] = _id_or_none(root_id)
    if any(v is not None and not ID_RE.match(v) for v in ids.values()):
        items: list[ExecutionRecord] = []
        next_cursor = None
    else:
        result = await _service(request).list(
            viewer.owner_id,
            flow_id=ids["flow_id"],
            status=_enum_or_none(ExecutionStatus, status),
            track=_enum_or_none(Track, track),
            parent_id=ids["parent_id"],
            root_id=ids["root_id"],
            created_after=_moment(created_after),
            created_before=_moment(created_before),
            limit=PAGE_SIZE,
            cursor=checked_cursor(cursor or None),
        )
        items, next_cursor = result.items, result.next_cursor
    active = {k: v for k, v in filters.items() if v}
    next_url = (
        f"/ui/executions?{urlencode({**active, 'cursor': next_cursor})}" if next_cursor else None
    )
    return page(
        request,
        "executions.html",
        viewer,
        items=items,
        filters=filters,
        statuses=list(ExecutionStatus),
        tracks=list(Track),
        next_url=next_url,
        first_url=f"/ui/executions?{urlencode(active)}" if cursor else None,
        unfinished=[e.id for e in items if not e.status.is_terminal],
        notice=notice,
        back=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
    )


@router.get("/statuses")
async def statuses(request: Request, viewer: CurrentViewer, ids: str = "") -> Response:
    """Out-of-band swaps of the given rows' status cells (the list polls this), and a new
    poller naming only those still unfinished, so polling stops when all have ended."""
    service = _service(request)
    rows: list[ExecutionRecord] = []
    for execution_id in [i for i in ids.split(",") if ID_RE.match(i)][:PAGE_SIZE]:
        try:
            rows.append(await service.get(viewer.owner_id, execution_id))
        except NotFound:
            continue
    unfinished = [r.id for r in rows if not r.status.is_terminal]
    return page(request, "_statuses.html", viewer, rows=rows, unfinished=unfinished)


@router.post("/stop")
async def bulk_stop(
    request: Request,
    viewer: CurrentViewer,
    ids: Annotated[list[str] | None, Form()] = None,
    back: Annotated[str, Form()] = "/ui/executions",
) -> Response:
    """Stop each selected execution (and its descendants); finished or unknown ones are
    counted, not errors: a selection can go stale while the operator looks at it."""
    service = _service(request)
    stopped = skipped = 0
    for execution_id in ids or []:
        try:
            await service.command(
                viewer.owner_id,
                checked_id("execution", execution_id),
                Command.STOP,
                "stopped from the console",
            )
            stopped += 1
        except (NotFound, Conflict):
            skipped += 1
    notice = f"stopped {stopped}" + (
        f", {skipped} already finished or not found" if skipped else ""
    )
    target = back if back.startswith("/ui/executions") else "/ui/executions"
    sep = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{sep}{urlencode({'notice': notice})}", status_code=303)


# -- one execution ---------------------------------------------------------------------------


_FINISHED: OrderedDict[str, list[Event]] = OrderedDict()
_FINISHED_SIZE = 256


async def events_so_far(
    service: ExecutionService, viewer: Viewer, record: ExecutionRecord
) -> list[Event]:
    """The stream as it is now (the row proved ownership). A finished execution's stream
    never changes, so it is kept: each replay opens a consumer on the events backend."""
    cached = _FINISHED.get(record.id)
    if cached is not None:
        _FINISHED.move_to_end(record.id)
        return cached
    events = await read_available(await service.subscribe(viewer.owner_id, record.id, 0))
    if record.status.is_terminal and events and events[-1].type.is_terminal:
        _FINISHED[record.id] = events
        if len(_FINISHED) > _FINISHED_SIZE:
            _FINISHED.popitem(last=False)
    return events


@router.get("/{execution_id}")
async def execution_page(request: Request, viewer: CurrentViewer, execution_id: str) -> Response:
    service = _service(request)
    record = await service.get(viewer.owner_id, checked_id("execution", execution_id))
    return page(request, "execution.html", viewer, record=record, commands=_commands(record))


def _commands(record: ExecutionRecord) -> list[str]:
    """The buttons that make sense now (the service refuses the rest anyway)."""
    s = record.status
    if s.is_terminal:
        return []
    if s is ExecutionStatus.CREATED:
        return ["start", "stop"]
    if s is ExecutionStatus.PAUSED:
        return ["resume", "step", "stop"]
    return ["pause", "stop"]


@router.get("/{execution_id}/row")
async def row_fragment(request: Request, viewer: CurrentViewer, execution_id: str) -> Response:
    record = await _service(request).get(viewer.owner_id, checked_id("execution", execution_id))
    return page(request, "_row.html", viewer, record=record, commands=_commands(record))


@router.get("/{execution_id}/waterfall")
async def waterfall_fragment(
    request: Request, viewer: CurrentViewer, execution_id: str
) -> Response:
    service = _service(request)
    record = await service.get(viewer.owner_id, checked_id("execution", execution_id))
    events = await events_so_far(service, viewer, record)
    return page(
        request, "_waterfall.html", viewer, wf=waterfall(events), width=760, execution_id=record.id
    )


@router.get("/{execution_id}/tree")
async def tree_fragment(request: Request, viewer: CurrentViewer, execution_id: str) -> Response:
    tree = await _service(request).tree(viewer.owner_id, checked_id("execution", execution_id))
    return page(request, "_tree.html", viewer, tree=tree)


@router.post("/{execution_id}/{command}")
async def command(
    request: Request, viewer: CurrentViewer, execution_id: str, command: str
) -> Response:
    try:
        chosen = Command(command)
    except ValueError:
        raise NotFound("command", command) from None
    service = _service(request)
    record = await service.command(
        viewer.owner_id, checked_id("execution", execution_id), chosen, "sent from the console"
    )
    record = await service.get(viewer.owner_id, record.id)
    return page(
        request,
        "_row.html",
        viewer,
        record=record,
        commands=_commands(record),
        notice=f"{chosen.value} sent",
    )


# -- the live log ----------------------------------------------------------------------------


def _start_index(from_index: int, last_event_id: str | None) -> int:
    """Resume after `Last-Event-ID` (a native EventSource reconnect) or at `from_index` (the
    page's own reconnect), whichever is later: never an event twice."""
    text = (last_event_id or "").strip()
    if text.isascii() and text.isdecimal() and int(text) < MAX_INDEX:
        return max(from_index, int(text) + 1)
    return from_index


def _summary(event: Event) -> str:
    data = {k: v for k, v in event.data.items() if k != "node_id"}
    text = json.dumps(data, separators=(",", ":"), default=str)
    return text if len(text) <= 300 else text[:297] + "..."


async def _messages(events: AsyncIterator[Event], release: Any) -> AsyncIterator[ServerSentEvent]:
    row = templates.env.get_template("_event.html")
    try:
        async for event in events:
            html = row.render(event=event, summary=_summary(event))
            yield ServerSentEvent(data=html, event="ev", id=str(event.index))
            if event.type.is_terminal:
                yield ServerSentEvent(data=event.type.value, event="end")
                break
    except EventsExpired as exc:
        yield ServerSentEvent(data=f"events expired: {exc}", event="end")
    finally:
        release()
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


@router.get("/{execution_id}/events")
async def live_events(
    request: Request,
    viewer: CurrentViewer,
    execution_id: str,
    from_index: Annotated[int, Query(ge=0, le=MAX_INDEX)] = 0,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """The event log as SSE of ready-made table rows (htmx's SSE extension appends them).

    After the terminal event an `end` message tells the page to close the stream; a reconnect
    past the end answers 204, which stops a browser's EventSource for good.
    """
    service = _service(request)
    record = await service.get(viewer.owner_id, checked_id("execution", execution_id))
    start = _start_index(from_index, last_event_id)
    if record.status.is_terminal and 0 < record.next_event_index <= start:
        return Response(status_code=204)
    slots: StreamSlots = request.app.state.stream_slots
    slot = slots.acquire("console:" + viewer.key_hash)
    try:
        events = await service.subscribe(viewer.owner_id, record.id, start)
    except BaseException:
        slot.release()
        raise
    return EventSourceResponse(_messages(events, slot.release), ping=PING_S)
