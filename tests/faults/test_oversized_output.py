"""A node whose output no events backend can store (over MAX_EVENT_BYTES) fails at once.

The rule lives in the engine's sequencer, so every mode behaves alike: the node fails with a
message naming it and the size, its error branch decides what follows, and the execution ends
within seconds (before: `running` forever in hybrid mode, a lease-loss failure after ~50 s on
Kafka, because the adapters were the ones that met the oversized record). An `emit` whose
payload no child's `execution.created` could store fails the same way, naming the emit node.
"""

from __future__ import annotations

import re
import time
from typing import Any

from tests.e2e import conftest as e2e
from tests.e2e import flows
from tests.e2e.conftest import Mode
from tests.e2e.stack import Api, assert_contiguous

# The e2e deployment fixtures, run in each mode.
mode, base_env, env, logs, stack, api = (
    e2e.mode,
    e2e.base_env,
    e2e.env,
    e2e.logs,
    e2e.stack,
    e2e.api,
)

# 20,000 copies of a 100-character input: a 2 MB text, twice the default MAX_EVENT_BYTES.
_COPIES = 20_000
_PIECE = "x" * 100


def _oversized(*, error_branch: bool) -> dict[str, Any]:
    nodes: list[tuple[str, str, dict[str, Any]]] = [
        ("piece", "const", {"value": _PIECE}),
        ("big", "template", {"template": "{a}" * _COPIES}),
        ("out", "output", {"name": "text"}),
        ("side", "const", {"value": 7}),
        ("independent", "output", {"name": "independent"}),
    ]
    edges = [("piece.value", "big.a"), ("big.text", "out.value")]
    edges.append(("side.value", "independent.value"))
    if error_branch:
        nodes.append(("caught", "output", {"name": "caught"}))
        edges.append(("big.error", "caught.value"))
    return flows.flow("oversized", nodes, edges)


# 999,400 characters: `big`'s node.completed fits the default MAX_EVENT_BYTES (1,000,000), the
# child's execution.created (the same payload, plus the room reserved for its other fields) not.
_EMIT_COPIES = 9_994


def _oversized_emit() -> dict[str, Any]:
    """`spawn` emits a text its own node could output, but no child's `execution.created`
    (which carries the payload) could store."""
    return flows.flow(
        "oversized-emit",
        [
            ("piece", "const", {"value": _PIECE}),
            ("big", "template", {"template": "{a}" * _EMIT_COPIES}),
            ("spawn", "emit", {"event": "go"}),
            ("on_go", "listen", {"event": "go"}),
            ("got", "output", {"name": "payload"}),
        ],
        [("piece.value", "big.a"), ("big.text", "spawn.payload"), ("on_go.payload", "got.value")],
    )


def _names_node_and_size(message: str, node: str = "big", over: int = _COPIES) -> None:
    assert f"node '{node}'" in message, message
    assert "MAX_EVENT_BYTES" in message, message
    sizes = [int(s.replace(",", "")) for s in re.findall(r"\d[\d,]*(?= bytes)", message)]
    assert sizes, message
    assert sizes[0] > over * len(_PIECE), message


async def _run(api: Api, error_branch: bool) -> tuple[list[dict[str, Any]], dict[str, Any], float]:
    flow_id = await api.create_flow(_oversized(error_branch=error_branch))
    ex = (await api.create(flow_id))["id"]
    watching = api.watch(ex)
    began = time.monotonic()
    assert await api.command(ex, "start") == 202
    events = await watching
    row = await api.wait_status(ex, {"completed", "failed"}, timeout=10)
    return events, row, time.monotonic() - began


def _failure_of_big(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert not [
        e for e in events if e["type"] == "node.completed" and e["data"]["node_id"] == "big"
    ]
    failed = [e for e in events if e["type"] == "node.failed"]
    assert [e["data"]["node_id"] for e in failed] == ["big"], failed
    _names_node_and_size(failed[0]["data"]["error"])
    return failed[0]


async def test_oversized_output_with_error_branch_takes_the_branch(api: Api, mode: Mode) -> None:
    events, row, took = await _run(api, error_branch=True)
    assert took < 10
    assert_contiguous(events)
    failure = _failure_of_big(events)
    assert failure["data"]["handled"] is True
    assert row["status"] == "completed", row
    assert row["outputs"]["independent"] == 7
    assert "text" not in row["outputs"]  # `out` was fed by the port that never had a value
    _names_node_and_size(row["outputs"]["caught"])
    assert events[-1]["type"] == "execution.completed"
    assert row["attempt"] == 1


async def test_oversized_output_without_error_branch_fails_the_execution(
    api: Api, mode: Mode
) -> None:
    events, row, took = await _run(api, error_branch=False)
    assert took < 10
    assert_contiguous(events)
    failure = _failure_of_big(events)
    assert failure["data"]["handled"] is False
    assert row["status"] == "failed", row
    assert row["error_node_id"] == "big"
    _names_node_and_size(row["error_message"])
    assert "renewing" not in row["error_message"]
    assert row["outputs"] == {"independent": 7}  # the independent branch still ran
    assert events[-1]["type"] == "execution.failed"
    assert row["attempt"] == 1


async def test_trigger_events_too_large_for_execution_created_are_refused_with_413(
    api: Api, mode: Mode
) -> None:
    flow_id = await api.create_flow(flows.three_nodes())
    body = {"flow_id": flow_id, "events": [{"name": "go", "payload": "p" * 1_000_000}]}
    r = await api.client.post("/v1/executions", json=body, headers=api.auth)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
    assert "execution.created" in r.json()["error"]["message"]
    assert "MAX_EVENT_BYTES" in r.json()["error"]["message"]
    listed = await api.client.get("/v1/executions", headers=api.auth)
    assert listed.json()["items"] == []  # refused before any row was written


async def test_an_emit_whose_payload_is_oversized_fails_its_node_and_spawns_nothing(
    api: Api, mode: Mode
) -> None:
    flow_id = await api.create_flow(_oversized_emit())
    ex = (await api.create(flow_id))["id"]
    watching = api.watch(ex)
    began = time.monotonic()
    assert await api.command(ex, "start") == 202
    events = await watching
    row = await api.wait_status(ex, {"completed", "failed"}, timeout=10)
    assert time.monotonic() - began < 10
    assert_contiguous(events)
    assert "child.spawned" not in {e["type"] for e in events}
    completed = {e["data"]["node_id"] for e in events if e["type"] == "node.completed"}
    assert "big" in completed  # the payload itself fit its node's event
    failed = [e for e in events if e["type"] == "node.failed"]
    assert [e["data"]["node_id"] for e in failed] == ["spawn"], failed
    _names_node_and_size(failed[0]["data"]["error"], "spawn", _EMIT_COPIES)
    assert "execution.created" in failed[0]["data"]["error"]
    assert (row["status"], row["error_node_id"], row["attempt"]) == ("failed", "spawn", 1), row
    _names_node_and_size(row["error_message"], "spawn", _EMIT_COPIES)
    assert events[-1]["type"] == "execution.failed"
    assert (await api.tree(ex))["size"] == 1  # no child was made
