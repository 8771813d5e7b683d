"""Flows: create, read any version, update (appends version N+1), list.

Create and update read the raw body and hand it to `parse_flow_json`, the one validator of flow
documents, so the 1 MiB cap, the NaN/Infinity refusal and every rule of flow validation
(domain/flow.py) apply with the same locations and messages everywhere a flow is read.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status

from twintrack.core.records import MAX_PAGE_SIZE
from twintrack.domain.flow import Flow, FlowValidationError, parse_flow_json
from twintrack.entrypoints.api.auth import Owner, require_owner
from twintrack.entrypoints.api.deps import Flows, Registry
from twintrack.entrypoints.api.errors import COMMON_RESPONSES, ApiError, ErrorResponse, issue
from twintrack.entrypoints.api.ids import checked_cursor, checked_id
from twintrack.entrypoints.api.payloads import ensure_storable
from twintrack.entrypoints.api.schemas import MAX_VERSION, FlowCreated, FlowOut, FlowPage
from twintrack.nodes.registry import NodeRegistry

router = APIRouter(
    prefix="/v1/flows",
    tags=["flows"],
    dependencies=[Depends(require_owner)],
    responses=COMMON_RESPONSES,
)

_FLOW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The flow document (at most 1 MiB).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FlowDocument"}}},
    }
}
_INVALID_FLOW: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Body over 1 MiB"},
    422: {
        "model": ErrorResponse,
        "description": "Invalid flow: `details` lists each problem as {location, message}",
    },
}


async def _parse(request: Request, registry: NodeRegistry) -> Flow:
    raw = await request.body()
    try:
        flow = parse_flow_json(raw, registry)
    except FlowValidationError as exc:
        details = [issue(i.location, i.message) for i in exc.issues]
        raise ApiError(422, "invalid_flow", str(exc), details) from None
    except RecursionError:
        message = "the flow document is nested too deeply"
        raise ApiError(422, "invalid_flow", message, [issue("", message)]) from None
    ensure_storable(flow.definition, code="invalid_flow")
    return flow


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=FlowCreated,
    openapi_extra=_FLOW_BODY,
    responses=_INVALID_FLOW,
    summary="Create a flow (version 1)",
)
async def create_flow(
    request: Request, owner: Owner, flows: Flows, registry: Registry
) -> FlowCreated:
    flow = await _parse(request, registry)
    ref = await flows.create(owner, flow.name, flow.definition)
    return FlowCreated(id=ref.id, version=ref.version)


@router.get("/{flow_id}", response_model=FlowOut, summary="A version of a flow (default: latest)")
async def get_flow(
    flow_id: str,
    owner: Owner,
    flows: Flows,
    version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None,
) -> FlowOut:
    record = await flows.get(owner, checked_id("flow", flow_id), version)
    return FlowOut.model_validate(record.model_dump())


@router.put(
    "/{flow_id}",
    response_model=FlowCreated,
    openapi_extra=_FLOW_BODY,
    responses=_INVALID_FLOW,
    summary="Update a flow: stores version N+1",
)
async def update_flow(
    flow_id: str, request: Request, owner: Owner, flows: Flows, registry: Registry
) -> FlowCreated:
    flow_id = checked_id("flow", flow_id)
    flow = await _parse(request, registry)
    version = await flows.update(owner, flow_id, flow.name, flow.definition)
    return FlowCreated(id=flow_id, version=version)


@router.get("", response_model=FlowPage, summary="The caller's flows, newest first")
async def list_flows(
    owner: Owner,
    flows: Flows,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> FlowPage:
    page = await flows.list(owner, limit=limit, cursor=checked_cursor(cursor))
    return FlowPage(items=page.items, next_cursor=page.next_cursor)
