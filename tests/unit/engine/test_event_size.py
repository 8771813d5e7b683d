"""MAX_EVENT_BYTES: the one size rule, applied by the engine's sequencer before any publish."""

from __future__ import annotations

from typing import Any

import pytest

from twintrack.config import load_settings
from twintrack.domain.events import Event, EventType
from twintrack.domain.execution import ExecutionStatus
from twintrack.domain.flow import validate_flow
from twintrack.engine import EventSequencer, EventTooLarge, check_event_size, run_flow
from twintrack.nodes.registry import builtin_registry

LIMIT = 8192


def _flow(nodes: list[tuple[str, str, dict[str, Any]]], edges: list[tuple[str, str]]) -> Any:
    definition = {
        "name": "size",
        "nodes": [{"id": i, "type": t, "config": c} for i, t, c in nodes],
        "edges": [{"from": a, "to": b} for a, b in edges],
    }
    return validate_flow(definition, builtin_registry())


async def _run(flow: Any) -> tuple[Any, list[Event]]:
    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    sink = EventSequencer("ex_1", publish, next_index=0, max_event_bytes=LIMIT)
    result = await run_flow(flow, execution_id="ex_1", sink=sink)
    assert [e.index for e in published] == list(range(len(published)))  # no index spent
    return result, published


def test_an_event_of_exactly_the_limit_passes_and_one_byte_more_does_not() -> None:
    event = Event(execution_id="ex_1", index=3, type=EventType.NODE_LOG, data={"node_id": "n"})
    size = len(event.model_dump_json().encode())
    check_event_size(event, size)
    check_event_size(event, None)
    with pytest.raises(EventTooLarge) as raised:
        check_event_size(event, size - 1)
    assert raised.value.node_id == "n"
    assert f"{size:,} bytes" in str(raised.value)


async def test_oversized_node_output_fails_the_node_and_takes_its_error_branch() -> None:
    flow = _flow(
        [
            ("piece", "const", {"value": "y" * 100}),
            ("big", "template", {"template": "{a}" * 200}),
            ("out", "output", {"name": "text"}),
            ("caught", "output", {"name": "caught"}),
        ],
        [("piece.value", "big.a"), ("big.text", "out.value"), ("big.error", "caught.value")],
    )
    result, events = await _run(flow)
    failed = [e for e in events if e.type is EventType.NODE_FAILED]
    assert [(e.data["node_id"], e.data["handled"]) for e in failed] == [("big", True)]
    assert "node 'big'" in failed[0].data["error"]
    assert f"MAX_EVENT_BYTES ({LIMIT:,} bytes)" in failed[0].data["error"]
    assert result.status is ExecutionStatus.COMPLETED
    assert result.outputs["caught"] == failed[0].data["error"]
    skipped = [e.data["node_id"] for e in events if e.type is EventType.NODE_SKIPPED]
    assert skipped == ["out"]


async def test_outputs_too_large_together_fail_the_execution_with_its_terminal_event() -> None:
    # Each node's outputs fit; the execution's outputs, all in execution.completed, do not.
    nodes: list[tuple[str, str, dict[str, Any]]] = []
    edges: list[tuple[str, str]] = []
    for i in range(4):
        nodes += [(f"c{i}", "const", {"value": "z" * 3000}), (f"o{i}", "output", {"name": f"o{i}"})]
        edges.append((f"c{i}.value", f"o{i}.value"))
    result, events = await _run(_flow(nodes, edges))
    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert "the outputs are too large" in result.error.message
    assert events[-1].type is EventType.EXECUTION_FAILED
    assert events[-1].data["outputs"] == {}
    assert sum(e.type.is_terminal for e in events) == 1


def test_the_default_limit_fits_kafkas_default_message_size_with_room_for_framing() -> None:
    settings = load_settings()
    # Apache Kafka's default message.max.bytes is 1,048,588; a record adds key, headers, framing.
    assert settings.max_event_bytes + 16 * 1024 <= 1_048_588
