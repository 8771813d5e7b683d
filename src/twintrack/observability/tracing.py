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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING

import structlog
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from twintrack.domain.events import Event, EventType

if TYPE_CHECKING:
    from twintrack.core.records import ExecutionRecord

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


def _traceparent_of(span: Span) -> str | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def _task_attributes(
    execution_id: str, attempt: int, track: str, events_backend: str
) -> dict[str, str | int]:
    return {
        "execution.id": execution_id,
        "attempt": attempt,
        "track": track,
        "events_backend": events_backend,
    }


@contextmanager
def task_sent(
    *, execution_id: str, attempt: int, track: str, events_backend: str, system: str
) -> Iterator[str | None]:
    """A producer span around handing a task to a track; yields the `traceparent` to send with
    the task (a Kafka header, a DBOS workflow input), None when tracing is off."""
    with tracer().start_as_current_span(
        "task.send",
        kind=SpanKind.PRODUCER,
        attributes={
            **_task_attributes(execution_id, attempt, track, events_backend),
            "messaging.system": system,
        },
    ) as span:
        yield _traceparent_of(span)


class TaskTaken:
    """The consumer span of a worker taking a task: `traceparent` is what the run continues
    (this span when the task carried a context, else the one stored with the row)."""

    def __init__(self, span: Span, carried: str | None) -> None:
        self.span = span
        self.traceparent = _traceparent_of(span) if carried else None
        self._ended = False

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self.span.end()

    def claimed(self, record: ExecutionRecord) -> ExecutionRecord:
        """The claimed record, set to continue this trace; ends the claim's span (the run that
        follows is a span of its own). A later claim of the same delivery keeps the trace."""
        if self._ended:
            return self._continuing(record)
        self.span.set_attributes(
            {
                **_task_attributes(
                    record.id, record.attempt, record.track.value, record.events_backend.value
                ),
                "queue.wait_ms": queue_wait_ms(record),
            }
        )
        self.end()
        return self._continuing(record)

    def _continuing(self, record: ExecutionRecord) -> ExecutionRecord:
        if self.traceparent is None:
            return record
        return record.model_copy(update={"traceparent": self.traceparent})


@contextmanager
def task_taken(*, execution_id: str, track: str, traceparent: str | None) -> Iterator[TaskTaken]:
    """A consumer span around claiming a delivered task, a child of the producer's when the task
    carried its `traceparent`. A task that carries none (re-sent by recovery, or sent with
    tracing off) gets no span: the run then continues the trace stored with the row."""
    if not traceparent:
        yield TaskTaken(trace.INVALID_SPAN, None)
        return
    span = tracer().start_span(
        "task.claim",
        context=context_from(traceparent),
        kind=SpanKind.CONSUMER,
        attributes={"execution.id": execution_id, "track": track},
    )
    taken = TaskTaken(span, traceparent)
    try:
        yield taken
    finally:
        taken.end()


def queue_wait_ms(record: ExecutionRecord) -> float:
    """How long the execution waited between being queued and a worker claiming it."""
    if record.queued_at is None or record.started_at is None:
        return 0.0
    return max(0.0, (record.started_at - record.queued_at).total_seconds() * 1000)


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
        events_backend: str = "",
        queue_wait_ms: float | None = None,
        provider: trace.TracerProvider | None = None,
    ) -> None:
        self._tracer = (provider or trace.get_tracer_provider()).get_tracer(TRACER_NAME)
        self._common: dict[str, str | int] = {
            "execution.id": execution_id,
            "track": track,
            "events_backend": events_backend,
            "attempt": attempt,
        }
        attributes: dict[str, str | int | float] = {**self._common, "worker.id": worker_id}
        if queue_wait_ms is not None:
            attributes["queue.wait_ms"] = queue_wait_ms
        self._span = self._tracer.start_span(
            "execution.run",
            context=context_from(traceparent),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        self._nodes: dict[str, Span] = {}

    @contextmanager
    def flushing(self) -> Iterator[None]:
        """A span around flushing the run's events to the bus (its last write before the end)."""
        with self._tracer.start_as_current_span(
            "events.flush",
            context=trace.set_span_in_context(self._span),
            attributes=self._common,
        ):
            yield

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
                attributes={
                    **self._common,
                    "node.id": node_id,
                    "node.type": str(event.data.get("type", "")),
                },
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
