"""Compare: run one of the owner's flows N times on each track, and show what `twintrack
compare` prints — the side-by-side table and the normalized stream diff.

Runs go through the service in this process (the console holds no API key to call itself
with), one at a time, alternating which track goes first, and are judged by the very same
`build_report` the CLI uses, so the page and the command cannot disagree. Admin keys only:
choosing the track bypasses the rollout settings.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response

from twintrack.adapters.postgres.flows import PostgresFlowStore
from twintrack.core.service import ExecutionService
from twintrack.domain.commands import Command
from twintrack.domain.execution import Track
from twintrack.entrypoints.api.ids import checked_id
from twintrack.entrypoints.console.session import CurrentViewer, Viewer
from twintrack.entrypoints.console.web import ConsoleRoute, page
from twintrack.tooling.compare_report import TRACKS, RunResult, build_report, percentile

router = APIRouter(prefix="/ui/compare", route_class=ConsoleRoute, include_in_schema=False)

MAX_RUNS = 50
RUN_TIMEOUT_S = 30.0


def _service(request: Request) -> ExecutionService:
    service: ExecutionService = request.app.state.container.service
    return service


async def run_once(
    service: ExecutionService, owner_id: str, flow_id: str, track: str, run: int
) -> RunResult:
    """One execution on `track`, followed to its end (the row is terminal once the stream
    has given the terminal event)."""
    result = RunResult(track=track, run=run)
    record = await service.create(owner_id, flow_id, track=Track(track))
    result.execution_id = record.id
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            await service.start(owner_id, record.id)
            events = await service.subscribe(owner_id, record.id, 0)
            async for event in events:
                result.events.append(event.model_dump(mode="json"))
                if event.type.is_terminal:
                    break
            final = await service.get(owner_id, record.id)
    except TimeoutError:
        result.status, result.problem = "timeout", f"did not end within {RUN_TIMEOUT_S:g}s"
        with contextlib.suppress(Exception):
            await service.command(owner_id, record.id, Command.STOP, "compare gave up")
        return result
    result.status, result.outputs = final.status.value, final.outputs
    return result


async def _flow_choices(request: Request, viewer: Viewer) -> list[tuple[str, str]]:
    flows: PostgresFlowStore = request.app.state.container.flows
    listed = await flows.list(viewer.owner_id, limit=100)
    return [(f.id, f.name) for f in listed.items]


@router.get("")
async def compare_form(request: Request, viewer: CurrentViewer) -> Response:
    return page(
        request,
        "compare.html",
        viewer,
        flows=await _flow_choices(request, viewer),
        report=None,
        chosen=None,
        runs=5,
    )


@router.post("")
async def compare_run(
    request: Request,
    viewer: CurrentViewer,
    flow_id: Annotated[str, Form()],
    runs: Annotated[int, Form(ge=1, le=MAX_RUNS)] = 5,
) -> Response:
    flows = await _flow_choices(request, viewer)
    if not viewer.is_admin:
        message = "Comparing picks each run's track, which only an admin key may do."
        return page(
            request,
            "compare.html",
            viewer,
            403,
            flows=flows,
            report=None,
            chosen=flow_id,
            runs=runs,
            error=message,
        )
    service = _service(request)
    flow = checked_id("flow", flow_id)
    results: list[RunResult] = []
    for run in range(runs):
        for track in TRACKS if run % 2 == 0 else TRACKS[::-1]:
            results.append(await run_once(service, viewer.owner_id, flow, track, run))
    report = build_report(results, runs)
    latency = {
        track: {
            "start_p50": percentile(s.create_to_start, 50),
            "start_p95": percentile(s.create_to_start, 95),
            "run_p50": percentile(s.start_to_end, 50),
            "run_p95": percentile(s.start_to_end, 95),
        }
        for track, s in report.summaries.items()
    }
    return page(
        request,
        "compare.html",
        viewer,
        flows=flows,
        report=report,
        latency=latency,
        results=results,
        chosen=flow,
        runs=runs,
    )
