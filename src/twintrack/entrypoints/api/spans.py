"""The API's span per HTTP request (OpenTelemetry), continuing an incoming `traceparent`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twintrack.observability.tracing import TRACER_NAME, tracer


class RequestSpans:
    """ASGI middleware: a server span per HTTP request, continuing an incoming `traceparent`.

    The span is named by the matched route template (`POST /v1/executions/{execution_id}/start`)
    so traces group by route rather than by id; the status code and any execution id in the
    path are attributes.
    """

    def __init__(self, app: ASGIApp, provider: trace.TracerProvider | None = None) -> None:
        self.app = app
        self._provider = provider

    def _tracer(self) -> trace.Tracer:
        if self._provider is not None:
            return self._provider.get_tracer(TRACER_NAME)
        return tracer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        parent = propagate.extract(headers)
        method = scope["method"]
        with self._tracer().start_as_current_span(
            f"{method} {scope['path']}", context=parent, kind=SpanKind.SERVER
        ) as span:
            span.set_attribute("http.request.method", method)
            span.set_attribute("url.path", scope["path"])

            async def send_and_record(message: Message) -> None:
                if message["type"] == "http.response.start":
                    code = int(message["status"])
                    span.set_attribute("http.response.status_code", code)
                    if code >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, send_and_record)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None)
                if template:
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.route", template)
                execution_id = scope.get("path_params", {}).get("execution_id")
                if execution_id:
                    span.set_attribute("execution.id", execution_id)


@contextmanager
def use_case(name: str, **attributes: str) -> Iterator[trace.Span]:
    """A span for the use case a route runs (`execution.create`, `execution.start`), inside
    the request's: what a start stores and sends with its task is this span's context, so the
    worker's run hangs under it."""
    with tracer().start_as_current_span(name, attributes=attributes) as span:
        yield span
