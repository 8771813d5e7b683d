"""One trace from the request that starts an execution to the worker's run and each node: the
start keeps the request's traceparent with the execution, the run continues it (either track,
through the row both read), and node spans come from the run's own events."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.unit.core.support import OWNER, SUM, claimed, flow, new_flow
from twintrack.bootstrap import MemoryContainer
from twintrack.domain.execution import ExecutionStatus
from twintrack.observability.tracing import task_sent, task_taken

FAILING = flow([("boom", "fail", {"message": "no"})], [])


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider with an in-memory exporter (set once per process: OTel
    refuses to replace a global provider)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


async def _run(app: MemoryContainer, definition: object) -> str:
    flow_id = await new_flow(app, definition)
    record = await app.service.create(OWNER, flow_id)
    with trace.get_tracer("test").start_as_current_span("POST start"):
        await app.service.start(OWNER, record.id)
    host = app.run_host("w-1")
    claim, claimed_record = await claimed(app, record.id)
    await host.launch(claim, claimed_record)
    return record.id


async def test_the_run_and_its_nodes_continue_the_trace_of_the_start_request(
    app: MemoryContainer, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    execution_id = await _run(app, SUM)
    row = await app.executions.get(execution_id)
    assert row.status is ExecutionStatus.COMPLETED
    finished = {s.name: s for s in spans.get_finished_spans()}
    request, run = finished["POST start"], finished["execution.run"]
    assert row.traceparent is not None
    assert row.traceparent.split("-")[1] == f"{request.context.trace_id:032x}"
    assert run.context.trace_id == request.context.trace_id
    assert run.parent is not None
    assert run.parent.span_id == request.context.span_id
    assert run.kind is SpanKind.CONSUMER
    assert dict(run.attributes or {})["execution.id"] == execution_id
    nodes = [s for s in finished.values() if s.name.startswith("node ")]
    assert sorted(s.name for s in nodes) == ["node add", "node out", "node x"]
    assert all(s.parent is not None and s.parent.span_id == run.context.span_id for s in nodes)
    assert all(s.start_time is not None and s.end_time is not None for s in nodes)
    assert all(s.start_time <= s.end_time for s in nodes)  # type: ignore[operator]


async def test_a_failed_node_and_execution_are_errors_in_the_trace(
    app: MemoryContainer, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    await _run(app, FAILING)
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert finished["node boom"].status.status_code is StatusCode.ERROR
    assert finished["execution.run"].status.status_code is StatusCode.ERROR
    assert dict(finished["execution.run"].attributes or {})["execution.status"] == "failed"


async def test_without_a_trace_nothing_is_kept(app: MemoryContainer) -> None:
    flow_id = await new_flow(app, SUM)
    record = await app.service.create(OWNER, flow_id)
    started = await app.service.start(OWNER, record.id)
    assert started.traceparent is None


async def test_a_task_carries_its_context_to_the_claim_and_the_run(
    app: MemoryContainer, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    flow_id = await new_flow(app, SUM)
    record = await app.service.create(OWNER, flow_id)
    with (
        trace.get_tracer("test").start_as_current_span("POST start"),
        task_sent(
            execution_id=record.id, attempt=1, track="kafka", events_backend="kafka", system="t"
        ) as carried,
    ):
        assert carried is not None
    with task_taken(execution_id=record.id, track="kafka", traceparent=carried) as delivery:
        continued = delivery.claimed(record)
    finished = {s.name: s for s in spans.get_finished_spans()}
    sent, claim = finished["task.send"], finished["task.claim"]
    assert sent.kind is SpanKind.PRODUCER
    assert claim.kind is SpanKind.CONSUMER
    assert claim.parent is not None
    assert claim.parent.span_id == sent.context.span_id
    assert dict(claim.attributes or {})["events_backend"] == "kafka"
    assert "queue.wait_ms" in dict(claim.attributes or {})
    # The run continues the claim, not the row's older context.
    assert continued.traceparent is not None
    assert continued.traceparent.split("-")[2] == f"{claim.context.span_id:016x}"


async def test_a_task_without_context_leaves_the_rows_trace(
    app: MemoryContainer, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    flow_id = await new_flow(app, SUM)
    record = (await app.service.create(OWNER, flow_id)).model_copy(
        update={"traceparent": "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"}
    )
    with task_taken(execution_id=record.id, track="dbos", traceparent=None) as delivery:
        assert delivery.claimed(record) == record
    assert [s.name for s in spans.get_finished_spans()] == []
