"""Flows: the owner's flows, and one version drawn as a DAG coloured by its last execution."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from twintrack.adapters.postgres.flows import PostgresFlowStore
from twintrack.core.service import ExecutionService
from twintrack.entrypoints.api.ids import checked_cursor, checked_id
from twintrack.entrypoints.console.dag import NODE_H, NODE_W, layout
from twintrack.entrypoints.console.routes.executions import events_so_far
from twintrack.entrypoints.console.session import CurrentViewer
from twintrack.entrypoints.console.timeline import node_statuses
from twintrack.entrypoints.console.web import ConsoleRoute, page

router = APIRouter(prefix="/ui/flows", route_class=ConsoleRoute, include_in_schema=False)


def _flows(request: Request) -> PostgresFlowStore:
    flows: PostgresFlowStore = request.app.state.container.flows
    return flows


def _service(request: Request) -> ExecutionService:
    service: ExecutionService = request.app.state.container.service
    return service


@router.get("")
async def flows_page(
    request: Request, viewer: CurrentViewer, cursor: str | None = None
) -> Response:
    result = await _flows(request).list(viewer.owner_id, limit=50, cursor=checked_cursor(cursor))
    return page(request, "flows.html", viewer, flows=result.items, next_cursor=result.next_cursor)


@router.get("/{flow_id}")
async def flow_page(
    request: Request, viewer: CurrentViewer, flow_id: str, version: int | None = None
) -> Response:
    flow = await _flows(request).get(viewer.owner_id, checked_id("flow", flow_id), version)
    service = _service(request)
    latest = await service.list(viewer.owner_id, flow_id=flow.id, limit=20)
    ran = next((e for e in latest.items if e.flow_version == flow.version), None)
    statuses: dict[str, str] = {}
    if ran is not None:
        statuses = node_statuses(await events_so_far(service, viewer, ran))
    return page(
        request,
        "flow.html",
        viewer,
        flow=flow,
        versions=list(range(flow.latest_version, 0, -1)),
        dag=layout(flow.definition, statuses),
        node_w=NODE_W,
        node_h=NODE_H,
        last_execution=ran,
        executions=latest.items,
    )
