"""Tracks: per track, what is unfinished (drained or not), and throughput, error rate and
create→completed latency over the last minutes, with the rollout in force (its phases, and for
admin keys its history and the guard's latest verdicts).

An ordinary key sees its own executions; an admin key sees the whole cluster's counts (no
ids), which is what an operator deciding "is the Kafka track drained" needs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from twintrack.adapters.postgres.console_queries import ConsoleQueries
from twintrack.core.service import ExecutionService
from twintrack.domain.execution import ExecutionStatus
from twintrack.entrypoints.console.session import CurrentViewer
from twintrack.entrypoints.console.web import ConsoleRoute, page

router = APIRouter(prefix="/ui/tracks", route_class=ConsoleRoute, include_in_schema=False)

WINDOWS_MIN = (1, 5, 15, 60)


@router.get("")
async def tracks_page(
    request: Request,
    viewer: CurrentViewer,
    minutes: Annotated[int, Query(ge=1, le=1440)] = 5,
) -> Response:
    queries: ConsoleQueries = request.app.state.console_queries
    service: ExecutionService = request.app.state.container.service
    scope = None if viewer.is_admin else viewer.owner_id
    health = await queries.track_health(scope, minutes * 60.0)
    policy = service.policy
    container = request.app.state.container
    live = getattr(container, "rollout", None)
    state = live.state if live is not None else None
    history, verdicts = [], []
    if viewer.is_admin:  # who changed the rollout and the guard's reasons: operators only
        history = await container.rollout_store.history(10)
        verdicts = await container.guard_store.recent(5)
    unfinished = {h.track: h.unfinished_total for h in health.values()} if scope is None else None
    return page(
        request,
        "tracks.html",
        viewer,
        health=list(health.values()),
        minutes=minutes,
        windows=WINDOWS_MIN,
        unfinished_statuses=[s for s in ExecutionStatus if not s.is_terminal],
        finished_statuses=[s for s in ExecutionStatus if s.is_terminal],
        scope="the whole cluster" if scope is None else f"owner '{viewer.owner_id}'",
        policy=policy,
        your_track=service.route(viewer.owner_id).value,
        live=state,
        phases=state.switches.phases(unfinished) if state is not None else {},
        history=history,
        verdicts=verdicts,
    )
