"""Liveness, readiness and metrics: no authentication, for orchestrators and scrapers.

`/healthz` does no I/O (a process that answers is alive); `/readyz` asks the container whether
its dependencies answer now, with a deadline so a hung dependency reads as "not ready" rather
than hanging the probe.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response

from twintrack.entrypoints.api.deps import Container
from twintrack.entrypoints.api.errors import ErrorResponse, error_response, report
from twintrack.entrypoints.api.metrics import render
from twintrack.entrypoints.api.schemas import Liveness, Readiness

READY_TIMEOUT_S = 5.0

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Liveness, summary="Liveness (no I/O)")
async def healthz() -> Liveness:
    return Liveness()


_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "Some dependency is not ready: see `details`"}
}


@router.get("/readyz", response_model=Readiness, responses=_NOT_READY, summary="Readiness")
async def readyz(container: Container) -> Response | Readiness:
    try:
        checks = await asyncio.wait_for(container.ready(), READY_TIMEOUT_S)
    except Exception as exc:  # a failing probe is an answer ("not ready"), not a crash
        report("warning", "readiness check failed", exc_info=exc)
        reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        return error_response(503, "not_ready", f"readiness check failed: {reason}", {})
    if not all(checks.values()):
        failing = ", ".join(sorted(name for name, ok in checks.items() if not ok))
        return error_response(503, "not_ready", f"not ready: {failing}", checks)
    return Readiness(checks=checks)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    summary="Prometheus metrics",
)
async def metrics() -> Response:
    body, content_type = render()
    return Response(body, media_type=content_type)
