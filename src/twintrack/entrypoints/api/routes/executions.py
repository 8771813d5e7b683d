"""Executions: create, read, list, tree, and the five commands.

Routes stay thin: ExecutionService does the work and its exceptions map to HTTP in
`api.errors` (NotFound 404, FlowValidationError 422, Conflict 409, LimitExceeded 429,
TrackUnavailable 503). `/tree` pages like the list endpoint, but its default page is the largest
(1,000, the default MAX_EXECUTIONS_PER_TREE), so a client that never pages still gets a whole
default-sized tree.
Choosing the track on create is for admin keys only (403 otherwise): it bypasses the rollout
settings, which an operator, not an application, should do.

A create with an `Idempotency-Key` is safe to retry (a client that timed out never creates
twice), and `GET /{id}?wait=N` is a long-poll (at most MAX_WAIT_S) that answers as soon as the
execution has ended: waiting for a result costs one request, not a poll loop. Both exist for
`twintrack.client`, and for any other client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status

from twintrack.core.records import MAX_PAGE_SIZE, ExecutionRecord
from twintrack.domain.commands import Command
from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.entrypoints.api.auth import Caller, Owner, forbidden, require_owner
from twintrack.entrypoints.api.deps import Service
from twintrack.entrypoints.api.errors import COMMON_RESPONSES, CreatedNotStarted, ErrorResponse
from twintrack.entrypoints.api.ids import checked_cursor, checked_id, checked_tree_cursor
from twintrack.entrypoints.api.metrics import (
    COMMANDS,
    EXECUTIONS_CREATED,
    tag_track,
    tag_variant,
)
from twintrack.entrypoints.api.payloads import ensure_storable
from twintrack.entrypoints.api.schemas import (
    ID_PATTERN,
    IDEMPOTENCY_KEY_HEADER,
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_WAIT_S,
    REPLAYED_HEADER,
    CommandAccepted,
    CommandRequest,
    CreateExecution,
    ExecutionCreated,
    ExecutionPage,
    ExecutionTreeOut,
)
from twintrack.entrypoints.api.spans import use_case
from twintrack.entrypoints.api.waits import EndWatch

router = APIRouter(
    prefix="/v1/executions",
    tags=["executions"],
    dependencies=[Depends(require_owner)],
    responses=COMMON_RESPONSES,
)

_CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {
        "description": "Created; or, under an `Idempotency-Key` used before, the execution "
        "that key made (as it is now)",
        "headers": {
            REPLAYED_HEADER: {
                "description": "`true` when this answer did not create: the key had made it",
                "schema": {"type": "string", "enum": ["true"]},
            }
        },
    },
    403: {"model": ErrorResponse, "description": "`track` was set by a key that is not admin"},
    404: {"model": ErrorResponse, "description": "No such flow (or version) for this owner"},
    422: {
        "model": ErrorResponse,
        "description": "Invalid body or options that do not fit the flow, `details` naming "
        "each; or `idempotency_key_reused`: the key came first with another body",
    },
    429: {
        "model": ErrorResponse,
        "description": "`start: true` only: the start was refused by the owner's running "
        "limit; the execution exists, `created` (`Location` names it)",
    },
    503: {
        "model": ErrorResponse,
        "description": "The chosen track is unavailable; retry. With `start: true` and a "
        "`Location` header: created, its start did not go through",
    },
}
_COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "The execution has already finished"},
    422: {"model": ErrorResponse, "description": "Invalid body; `details` names the field"},
    429: {
        "model": ErrorResponse,
        "description": "`start` only: the owner already has MAX_RUNNING_EXECUTIONS_PER_OWNER "
        "started, unfinished executions; the execution stays `created`, start it later",
    },
}
_COMMAND_SUMMARIES = {
    Command.START: "Start a created execution (queue it for a worker of its track)",
    Command.PAUSE: "Pause before the next node",
    Command.RESUME: "Resume a paused execution",
    Command.STEP: "Run exactly one more node, then stay paused",
    Command.STOP: "Stop now: cancel running nodes, stop descendants too",
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ExecutionCreated,
    responses=_CREATE_RESPONSES,
    summary="Create an execution of a flow (status `created`; `start` runs it, or `start: true`)",
)
async def create_execution(
    body: CreateExecution,
    request: Request,
    response: Response,
    caller: Caller,
    service: Service,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=IDEMPOTENCY_KEY_HEADER,
            min_length=1,
            max_length=MAX_IDEMPOTENCY_KEY_CHARS,
            pattern=r"^[\x21-\x7e]+$",
            description="Makes the create safe to retry: the same key (per owner) answers "
            "with the execution it first made, for IDEMPOTENCY_KEY_TTL_S (24 h); the "
            f"answer then carries `{REPLAYED_HEADER}: true`. The same key with another "
            "body is refused (422 `idempotency_key_reused`). Printable ASCII, at most "
            f"{MAX_IDEMPOTENCY_KEY_CHARS} characters: a UUID per logical create is ideal.",
        ),
    ] = None,
) -> ExecutionCreated:
    if body.track is not None and not caller.is_admin:
        raise forbidden("track", "only an admin API key may choose the track")
    ensure_storable(body.model_dump())
    arguments: dict[str, Any] = {
        "version": body.version,
        "options": body.options,
        "events": body.events,
        "track": body.track,
    }
    with use_case("execution.create", **{"flow.id": body.flow_id}) as span:
        if idempotency_key is None:
            record = await service.create(caller.owner_id, body.flow_id, **arguments)
            created = True
        else:
            record, created = await service.create_once(
                caller.owner_id, idempotency_key, body.flow_id, **arguments
            )
        span.set_attributes(
            {
                "execution.id": record.id,
                "track": record.track.value,
                "events_backend": record.events_backend.value,
            }
        )
    if created:
        EXECUTIONS_CREATED.labels(record.track).inc()
    else:
        response.headers[REPLAYED_HEADER] = "true"
    tag_track(request, record.track)
    location = f"{request.url.path.rstrip('/')}/{record.id}"
    if body.start:
        with use_case("execution.start", **{"execution.id": record.id}):
            try:
                record = await service.start_new(caller.owner_id, record)
            except Exception as exc:
                raise CreatedNotStarted(location, exc) from exc
        COMMANDS.labels(record.track, Command.START.value).inc()
    response.headers["Location"] = location
    return ExecutionCreated(
        id=record.id,
        status=record.status,
        track=record.track,
        events_backend=record.events_backend,
    )


@router.get("", response_model=ExecutionPage, summary="The caller's executions, newest first")
async def list_executions(
    owner: Owner,
    service: Service,
    flow_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    status: ExecutionStatus | None = None,
    track: Track | None = None,
    parent_id: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="Only its direct children")
    ] = None,
    root_id: Annotated[
        str | None,
        Query(pattern=ID_PATTERN, description="Only the executions of its tree, itself included"),
    ] = None,
    created_after: Annotated[
        datetime | None,
        Query(description="Created at or after this instant (ISO 8601; no zone means UTC)"),
    ] = None,
    created_before: Annotated[
        datetime | None,
        Query(description="Created strictly before this instant (ISO 8601; no zone means UTC)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=1024, description="`next_cursor` of a page asked with the same filters"),
    ] = None,
) -> ExecutionPage:
    page = await service.list(
        owner,
        flow_id=flow_id,
        status=status,
        track=track,
        parent_id=parent_id,
        root_id=root_id,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        cursor=checked_cursor(cursor),
    )
    return ExecutionPage(items=page.items, next_cursor=page.next_cursor)


@router.get("/{execution_id}", response_model=ExecutionRecord, summary="The execution's row")
async def get_execution(
    execution_id: str,
    request: Request,
    owner: Owner,
    service: Service,
    wait: Annotated[
        float | None,
        Query(
            ge=0,
            allow_inf_nan=False,
            description="Long-poll: hold the answer until the execution has ended, at most "
            f"this many seconds (and never more than {MAX_WAIT_S:g}, whatever is asked), "
            "then answer with the row as it is then. Without it: at once.",
        ),
    ] = None,
) -> ExecutionRecord:
    record = await service.get(owner, checked_id("execution", execution_id))
    if wait and not record.status.is_terminal:
        tag_variant(request, "?wait")
        watch: EndWatch = request.app.state.end_watch
        await watch.wait(record.id, min(wait, MAX_WAIT_S))
        record = await service.get(owner, record.id)
    tag_track(request, record.track)
    return record


@router.get(
    "/{execution_id}/tree",
    response_model=ExecutionTreeOut,
    summary="The execution and its descendants, a page at a time, with the aggregate status",
)
async def get_tree(
    execution_id: str,
    request: Request,
    owner: Owner,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = MAX_PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> ExecutionTreeOut:
    tree = await service.tree(
        owner,
        checked_id("execution", execution_id),
        limit=limit,
        cursor=checked_tree_cursor(cursor),
    )
    if tree.executions:
        tag_track(request, tree.executions[0].track)
    return ExecutionTreeOut(
        root_id=tree.root_id,
        tree_status=tree.tree_status,
        size=tree.size,
        executions=tree.executions,
        next_cursor=tree.next_cursor,
    )


CommandEndpoint = Callable[..., Awaitable[CommandAccepted]]


def _command_endpoint(command: Command) -> CommandEndpoint:
    async def endpoint(
        execution_id: str,
        request: Request,
        owner: Owner,
        service: Service,
        body: CommandRequest | None = None,
    ) -> CommandAccepted:
        reason = body.reason if body is not None else None
        if reason is not None:
            ensure_storable(reason, "reason")
        checked = checked_id("execution", execution_id)
        with use_case(f"execution.{command.value}", **{"execution.id": checked}) as span:
            record = await service.command(owner, checked, command, reason)
            span.set_attributes(
                {"track": record.track.value, "events_backend": record.events_backend.value}
            )
        COMMANDS.labels(record.track, command.value).inc()
        tag_track(request, record.track)
        return CommandAccepted(id=record.id, command=command, status=record.status)

    endpoint.__name__ = f"{command.value}_execution"
    return endpoint


for _command in Command:
    router.add_api_route(
        f"/{{execution_id}}/{_command.value}",
        _command_endpoint(_command),
        methods=["POST"],
        status_code=status.HTTP_202_ACCEPTED,
        response_model=CommandAccepted,
        responses=_COMMAND_RESPONSES,
        summary=_COMMAND_SUMMARIES[_command],
    )
