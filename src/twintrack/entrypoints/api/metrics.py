"""Prometheus metrics, all on one dedicated registry and all labelled with the track.

Every metric carries `track` (the two tracks are compared side by side), `"none"` where a
request concerns no execution. The registry is our own, not prometheus-client's default, so
`/metrics` shows exactly twintrack's metrics and importing this module twice (tests, workers
sharing a process) never collides. Workers import this module and add theirs to `REGISTRY`.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twintrack.domain.execution import Track
from twintrack.observability.metrics import REGISTRY, render

__all__ = ["REGISTRY", "render"]
NO_TRACK = "none"

EXECUTIONS_CREATED = Counter(
    "twintrack_executions_created",
    "Executions created through the API.",
    ["track"],
    registry=REGISTRY,
)
COMMANDS = Counter(
    "twintrack_commands",
    "Commands accepted by the API (start, pause, resume, step, stop).",
    ["track", "command"],
    registry=REGISTRY,
)
HTTP_REQUEST_SECONDS = Histogram(
    "twintrack_http_request_seconds",
    "Time to the response head (for SSE, to the start of the stream), by route template.",
    ["method", "route", "status", "track"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
SSE_SUBSCRIBERS = Gauge(
    "twintrack_sse_subscribers",
    "Open Server-Sent Events streams.",
    ["track"],
    registry=REGISTRY,
)
SSE_EVENTS_SENT = Counter(
    "twintrack_sse_events_sent",
    "Events written to Server-Sent Events streams.",
    ["track"],
    registry=REGISTRY,
)


def tag_variant(request: Request, variant: str) -> None:
    """Time this request apart from its route's plain calls (a long-poll's `?wait` holds it by
    design; mixed in, it would hide the route's real latency)."""
    request.state.route_variant = variant


def tag_track(request: Request, track: Track | str) -> None:
    """Label this request's timing with the execution's track, once a route knows it."""
    request.state.track = str(track)


class RequestMetrics:
    """Time every HTTP request by route template (never the raw path: ids would explode the
    label set); unmatched paths share one `route` label."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            if observed:
                return
            observed = True
            state = scope.get("state") or {}
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            route += state.get("route_variant", "")
            track = state.get("track", NO_TRACK)
            HTTP_REQUEST_SECONDS.labels(scope["method"], route, str(status), track).observe(
                time.perf_counter() - started
            )

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                observe(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except Exception:
            observe(500)
            raise
