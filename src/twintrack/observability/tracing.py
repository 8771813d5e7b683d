"""OpenTelemetry tracing: one span per API request (this module), W3C trace context in and out
as a `traceparent` string (for task deliveries to carry into the worker), and the set-up.

Off by default and never in the way of a host application: `configure_tracing` installs a
TracerProvider only when none is set yet and only when asked to — `OTEL_TRACES_EXPORTER`
(`otlp`, `console`, or `none`, the default) picks the exporter, the other standard `OTEL_*`
variables (endpoint, headers, service name, sampler) configure it as the SDK documents. The
OTLP exporter is the optional `opentelemetry-exporter-otlp-proto-http` package; without it,
`otlp` logs a warning and exports nothing. Tests pass their own provider with an in-memory
exporter.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import structlog
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger()
TRACER_NAME = "twintrack"


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def _exporter(name: str) -> SpanExporter | None:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http")
            return None
        exporter: SpanExporter = OTLPSpanExporter()
        return exporter
    return None


def configure_tracing(environ: Mapping[str, str] | None = None) -> bool:
    """Install a provider from the `OTEL_*` variables; False when tracing stays off.

    A provider already set (by the host, or by `opentelemetry-instrument`) is kept: ours would
    silently steal its spans.
    """
    env = os.environ if environ is None else environ
    chosen = env.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if chosen in ("", "none"):
        return False
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return False
    exporter = _exporter(chosen)
    if exporter is None:
        return False
    service = env.get("OTEL_SERVICE_NAME", "twintrack")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return True


# -- context across processes -----------------------------------------------------------------


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span, to store with a task (Kafka header, DBOS
    workflow input), or None outside any sampled span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> context.Context:
    """The context a worker continues the trace in (the root context when there is none)."""
    if not traceparent:
        return context.Context()
    return propagate.extract({"traceparent": traceparent})


# -- one span per request ---------------------------------------------------------------------


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
