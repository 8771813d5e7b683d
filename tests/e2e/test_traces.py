"""Traces across processes: the API and a worker as separate processes (each with the host's
own TracerProvider, tests/e2e/traced.py), in each mode. A started execution is one trace, from
the start request through the task's delivery and claim to the run, its nodes and the events
flush, with the attributes operators filter on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.e2e import flows
from tests.e2e.conftest import Mode
from tests.e2e.stack import eventually, open_stack
from twintrack.tooling.embedded._proc import free_port

Span = dict[str, Any]


def read_spans(folder: Path) -> list[Span]:
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.open()]


async def test_one_trace_per_execution_across_api_and_worker_processes(
    env: dict[str, str], logs: Path, mode: Mode, tmp_path: Path
) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    # `console` would replace a provider we do not keep: the spans must reach the host's file.
    traced = {"TRACES_DIR": str(traces), "OTEL_TRACES_EXPORTER": "console"}
    async with open_stack(env, logs) as stack:
        port = free_port()
        api_proc = stack.spawn_api_process("api", port, module="tests.e2e.traced", env=traced)
        worker_proc = stack.spawn_worker_process("worker", module="tests.e2e.traced", env=traced)
        headers = {"Authorization": f"Bearer {stack.api.key}"}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30
        ) as http:

            async def up() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(up, timeout=30)
            flow = await http.post("/v1/flows", json=flows.three_nodes())
            created = await http.post("/v1/executions", json={"flow_id": flow.json()["id"]})
            execution_id = created.json()["id"]
            assert (await http.post(f"/v1/executions/{execution_id}/start")).status_code == 202
            done = await http.get(f"/v1/executions/{execution_id}", params={"wait": 20})
            assert done.json()["status"] == "completed"

        async def probe() -> list[Span] | None:
            spans = read_spans(traces)
            ended = any(
                s["name"] == "execution.run" and s["attributes"].get("execution.id") == execution_id
                for s in spans
            )
            return spans if ended else None

        spans = await eventually(probe, timeout=15)

    by_name: dict[str, list[Span]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    start = next(
        s for s in by_name["execution.start"] if s["attributes"]["execution.id"] == execution_id
    )
    by_id = {s["span_id"]: s for s in spans}
    ancestors = []
    parent = start["parent_id"]
    while parent in by_id:  # the request's span, and any a framework put in between
        ancestors.append(by_id[parent])
        parent = by_id[parent]["parent_id"]
    request = ancestors[-1]
    assert request["name"] == "POST /v1/executions/{execution_id}/start"
    assert request["kind"] == "SERVER"
    trace_id = start["trace_id"]
    mine = [s for s in spans if s["trace_id"] == trace_id]
    api_pid, worker_pid = (
        request["pid"],
        next(s["pid"] for s in mine if s["name"] == "execution.run"),
    )
    assert api_pid == api_proc.pid  # two processes, one trace
    assert worker_pid == worker_proc.pid

    run = next(s for s in mine if s["name"] == "execution.run")
    expected = {
        "execution.id": execution_id,
        "track": mode.track,
        "events_backend": mode.events_backend,
        "attempt": 1,
    }
    assert expected.items() <= run["attributes"].items()
    assert run["attributes"]["queue.wait_ms"] >= 0
    nodes = {s["attributes"]["node.id"]: s for s in mine if s["name"].startswith("node ")}
    assert set(nodes) == {"x", "add", "out"}
    for node in nodes.values():
        assert node["parent_id"] == run["span_id"]
        assert expected.items() <= node["attributes"].items()
    flush = next(s for s in mine if s["name"] == "events.flush")
    assert flush["parent_id"] == run["span_id"]

    sent = next(s for s in mine if s["name"] == "task.send")
    assert sent["pid"] == api_pid
    assert sent["kind"] == "PRODUCER"
    assert sent["parent_id"] == start["span_id"]
    if mode.events_backend == "dbos":
        # The workflow was made at creation, its inputs fixed: the run continues the row's
        # traceparent, which the start stored.
        assert run["parent_id"] == start["span_id"]
    else:
        # The context travelled with the task (a Kafka header, a DBOS workflow input).
        claim = next(s for s in mine if s["name"] == "task.claim")
        assert claim["pid"] == worker_pid
        assert claim["parent_id"] == sent["span_id"]
        assert claim["attributes"]["queue.wait_ms"] >= 0
        assert run["parent_id"] == claim["span_id"]
    # Nothing of this execution's run landed in another trace.
    elsewhere = [
        s
        for s in spans
        if s["trace_id"] != trace_id
        and s["pid"] == worker_pid
        and s["attributes"].get("execution.id") == execution_id
    ]
    assert elsewhere == []
