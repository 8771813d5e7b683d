"""Tracing of the API: a server span per request, named by route, continuing the caller's
W3C trace; the provider setup never replaces one the host already set."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.api.test_api import Container, build_container, client_for
from twintrack.observability.tracing import configure_tracing, context_from, current_traceparent

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
pytestmark = pytest.mark.integration


@pytest.fixture
def container(db_engine: AsyncEngine) -> Container:
    return build_container(db_engine)


async def test_each_request_is_a_server_span_continuing_the_callers_trace(
    container: Container,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    key = (await container.keys.create("alice")).key
    headers = {
        "Authorization": f"Bearer {key}",
        "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
    }
    async with client_for(container, tracer_provider=provider) as http:
        flow = await http.post(
            "/v1/flows",
            headers=headers,
            json={"name": "f", "nodes": [{"id": "x", "type": "const", "config": {"value": 1}}]},
        )
        assert flow.status_code == 201
        missing = await http.get("/v1/executions/ex_missing", headers=headers)
        assert missing.status_code == 404
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["POST /v1/flows", "GET /v1/executions/{execution_id}"]
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE_ID}
    assert spans[0].attributes is not None
    assert spans[0].attributes["http.response.status_code"] == 201
    assert spans[1].attributes is not None
    assert spans[1].attributes["execution.id"] == "ex_missing"
    assert spans[1].kind is trace.SpanKind.SERVER


def test_traceparent_round_trips_through_a_task() -> None:
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("api") as span:
        carried = current_traceparent()
    assert carried is not None
    assert format(span.get_span_context().trace_id, "032x") in carried
    restored = trace.get_current_span(context_from(carried)).get_span_context()
    assert restored.trace_id == span.get_span_context().trace_id
    assert not trace.get_current_span(context_from(None)).get_span_context().is_valid


def test_tracing_is_off_by_default_and_keeps_a_host_provider() -> None:
    assert configure_tracing({}) is False
    assert configure_tracing({"OTEL_TRACES_EXPORTER": "none"}) is False
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        assert configure_tracing({"OTEL_TRACES_EXPORTER": "console"}) is False
