"""An execution's events as Server-Sent Events.

Each message carries `id:` = the event index, `event:` = its type and `data:` = the envelope, so a
browser's EventSource resumes by itself: it reconnects with `Last-Event-ID` and the stream goes on
from the next index. Ownership is checked before the stream opens (a 404 is JSON, not an SSE
error), and the stream ends after the terminal event. A reconnect after that terminal event gets
204 No Content, which tells EventSource to stop reconnecting instead of looping on empty streams.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response, Security, status
from fastapi.security import HTTPAuthorizationCredentials
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from twintrack.core.ports import EventsExpired
from twintrack.core.records import ExecutionRecord
from twintrack.core.service import ExecutionService
from twintrack.domain.events import Event
from twintrack.entrypoints.api.auth import Owner, bearer_scheme, require_owner
from twintrack.entrypoints.api.deps import Service
from twintrack.entrypoints.api.errors import COMMON_RESPONSES, ApiError, ErrorResponse, issue
from twintrack.entrypoints.api.ids import checked_id
from twintrack.entrypoints.api.limits import StreamSlot, StreamSlots
from twintrack.entrypoints.api.metrics import SSE_EVENTS_SENT, SSE_SUBSCRIBERS, tag_track

PING_INTERVAL_S = 15
MAX_INDEX = 2**63 - 1  # event indices are BIGINT in the database

router = APIRouter(
    prefix="/v1/executions",
    tags=["events"],
    dependencies=[Depends(require_owner)],
    responses=COMMON_RESPONSES,
)

# One SSE message, as OpenAPI 3.1 tools read `schema` under `text/event-stream` (3.2 would say
# `itemSchema`): `id` is the event's index, `event` its type and `data` the event as JSON; a
# stream that cannot go on ends with `event: error`, `data: {"error": ...}`, and no id.
_SSE_MESSAGE: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "anyOf": [
                    {"required": ["execution_id", "index", "type", "timestamp", "data"]},
                    {"required": ["error"]},
                ],
            },
        },
    },
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`text/event-stream`: one message per event, ending after the terminal "
        "one (`id` = index, `event` = type, `data` = the event as JSON)",
        "content": {"text/event-stream": {"schema": _SSE_MESSAGE}},
    },
    204: {"description": "The execution has finished and nothing follows the given index"},
    400: {"model": ErrorResponse, "description": "Bad `from_index` or `Last-Event-ID`"},
    429: {
        "model": ErrorResponse,
        "description": "This key already has MAX_SSE_STREAMS_PER_KEY streams open; close one",
    },
}


def _start_index(from_index: int, last_event_id: str | None) -> int:
    """Where the stream starts: the later of `from_index` and the index after `Last-Event-ID`."""
    if last_event_id is None or not last_event_id.strip():
        return from_index
    text = last_event_id.strip()
    if not (text.isascii() and text.isdecimal()) or int(text) >= MAX_INDEX:
        message = f"Last-Event-ID must be an event index, got {last_event_id!r}"
        raise ApiError(400, "invalid_parameter", message, [issue("header.Last-Event-ID", message)])
    return max(from_index, int(text) + 1)


async def _finished_before(service: ExecutionService, record: ExecutionRecord, start: int) -> bool:
    """Whether the execution is over and its stream has nothing at or after `start`."""
    # A finished execution's row records where its stream ends: no need to read the stream.
    return record.status.is_terminal and start > 0 and start >= record.next_event_index


class _HeldStream(EventSourceResponse):
    """An SSE response that frees its stream slot however it ends (even never iterated)."""

    def __init__(self, content: AsyncIterator[ServerSentEvent], slot: StreamSlot) -> None:
        super().__init__(content, ping=PING_INTERVAL_S)
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slot.release()


async def _messages(
    events: AsyncIterator[Event], track: str, slot: StreamSlot
) -> AsyncIterator[ServerSentEvent]:
    SSE_SUBSCRIBERS.labels(track).inc()
    try:
        async for event in events:
            yield ServerSentEvent(
                data=event.model_dump_json(), event=event.type.value, id=str(event.index)
            )
            SSE_EVENTS_SENT.labels(track).inc()
            if event.type.is_terminal:
                break
    except EventsExpired as exc:
        # The stream cannot be served without a gap: one `error` message says so, then it ends.
        error = {
            "code": "events_expired",
            "message": str(exc),
            "earliest_index": exc.earliest_index,
        }
        yield ServerSentEvent(data=json.dumps({"error": error}), event="error")
    finally:
        slot.release()  # at once: the terminal event was sent or the client is gone
        SSE_SUBSCRIBERS.labels(track).dec()
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


@router.get(
    "/{execution_id}/events",
    response_class=EventSourceResponse,
    responses=_RESPONSES,
    summary="Stream the execution's events (Server-Sent Events), from any index",
)
async def stream_events(
    execution_id: str,
    request: Request,
    owner: Owner,
    service: Service,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    from_index: Annotated[
        int, Query(ge=0, le=MAX_INDEX, description="First event index to send.")
    ] = 0,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Resume after this index (sent by EventSource on reconnect).",
        ),
    ] = None,
) -> Response:
    start = _start_index(from_index, last_event_id)
    record = await service.get(owner, checked_id("execution", execution_id))
    tag_track(request, record.track)
    if await _finished_before(service, record, start):
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    assert credentials is not None  # require_owner refused the request otherwise
    slots: StreamSlots = request.app.state.stream_slots
    slot = slots.acquire(credentials.credentials)
    try:
        events = await service.subscribe(owner, record.id, start)
    except BaseException:
        slot.release()
        raise
    return _HeldStream(_messages(events, record.track.value, slot), slot)
