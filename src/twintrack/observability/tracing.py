"""OpenTelemetry tracing: the set-up, W3C trace context as a `traceparent` string (stored with
an execution when it is started, so the worker that runs it continues the trace), and a run's
spans (`RunSpans`: one per execution run, one per node, built from the run's own events).
The API's span per request is `entrypoints/api/spans.py`.

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
from types import TracebackType

import structlog
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from twintrack.domain.events import Event, EventType

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


# -- one execution run ------------------------------------------------------------------------

_NODE_ENDINGS = {
    EventType.NODE_COMPLETED: None,
    EventType.NODE_FAILED: "failed",
    EventType.NODE_SKIPPED: "skipped",
}


class RunSpans:
    """A consumer span for one run of an execution on a worker (either track), continuing the
    trace of the request that started it, with a child span per node.

    Node spans are made from the events the run emits (node.started … node.completed / failed /
    skipped), so the engine stays free of tracing and a span's times are the events' times.
    """

    def __init__(
        self,
        *,
        execution_id: str,
        track: str,
        attempt: int,
        worker_id: str,
        traceparent: str | None,
        provider: trace.TracerProvider | None = None,
    ) -> None:
        self._tracer = (provider or trace.get_tracer_provider()).get_tracer(TRACER_NAME)
        self._span = self._tracer.start_span(
            "execution.run",
            context=context_from(traceparent),
            kind=SpanKind.CONSUMER,
            attributes={
                "execution.id": execution_id,
                "execution.track": track,
                "execution.attempt": attempt,
                "worker.id": worker_id,
            },
        )
        self._nodes: dict[str, Span] = {}

    def __enter__(self) -> RunSpans:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for span in self._nodes.values():  # nodes a crash or a lost lease cut short
            span.set_status(Status(StatusCode.ERROR, "run ended first"))
            span.end()
        if exc is not None:
            self._span.record_exception(exc)
            self._span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        self._span.end()

    def see(self, event: Event) -> None:
        """Follow the run's events: open and close node spans, mark the run's ending."""
        at = int(event.timestamp.timestamp() * 1e9)
        node_id = event.data.get("node_id")
        if event.type is EventType.NODE_STARTED and isinstance(node_id, str):
            self._nodes[node_id] = self._tracer.start_span(
                f"node {node_id}",
                context=trace.set_span_in_context(self._span),
                start_time=at,
                attributes={"node.id": node_id, "node.type": str(event.data.get("type", ""))},
            )
        elif event.type in _NODE_ENDINGS and isinstance(node_id, str):
            span = self._nodes.pop(node_id, None)
            if span is None:  # skipped nodes never started
                return
            if event.type is EventType.NODE_FAILED:
                span.set_status(Status(StatusCode.ERROR, str(event.data.get("error", ""))[:200]))
            span.end(end_time=at)
        elif event.type.is_terminal:
            self._span.set_attribute("execution.status", event.type.value.split(".")[1])
            if event.type is EventType.EXECUTION_FAILED:
                self._span.set_status(Status(StatusCode.ERROR, "execution failed"))
