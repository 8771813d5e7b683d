"""DESIGN §4: event written → SSE client receives it, p99 ≤ 20 ms.

A chain of `delay` nodes (ms=2) emits three events per node. The SSE stream is opened, and the
execution started only once `execution.created` has arrived (the reader is live), so every later
event is a live delivery: its delay is receipt time minus the envelope's `timestamp`, which the
engine sets when it creates the event (same machine, same clock).
"""

from __future__ import annotations

from bench.config import Sizes
from bench.drive import start
from bench.flows import chain
from bench.infra import Deployment, progress
from bench.report import Row, Section
from bench.sse import Received, subscribe
from bench.stats import Summary, fmt

GOAL_P99_MS = 20.0


async def _one(deployment: Deployment, flow_id: str) -> list[Received]:
    api = deployment.api
    execution_id = (await api.create(flow_id))["id"]
    async with subscribe(api, execution_id) as stream:
        created = await stream.until_type("execution.created")
        await start(api, execution_id)
        await stream.until_terminal()
    return [r for r in stream.seen if r.event["index"] > created.event["index"]]


async def measure(deployment: Deployment, sizes: Sizes) -> Section:
    flow_id = await deployment.api.create_flow(chain(sizes.chain_length, ms=2))
    progress(f"events: {sizes.event_runs} runs of a {sizes.chain_length}-delay chain")
    received: list[Received] = []
    for _ in range(sizes.event_runs):
        received += await _one(deployment, flow_id)
    delays = Summary.of([r.delay_ms for r in received])
    progress(f"events: {delays.line()}")
    by_type: dict[str, list[float]] = {}
    for r in received:
        by_type.setdefault(r.type, []).append(r.delay_ms)
    row = Row(
        "sse",
        "event written → SSE client receives it, p50 / p99",
        f"p99 ≤ {GOAL_P99_MS:g} ms",
        f"{fmt(delays.p50)} / {fmt(delays.p99)} ms",
        delays.p99 <= GOAL_P99_MS,
        (delays.p50, delays.p99),
    )
    details = [
        f"{len(received)} live events from {sizes.event_runs} executions of a chain of "
        f"{sizes.chain_length} `delay` (ms=2) nodes; all: {delays.line()}. By type:",
        "",
        "| event type | n | p50 | p99 | max |",
        "|---|---|---|---|---|",
        *(
            f"| {t} | {s.n} | {fmt(s.p50)} | {fmt(s.p99)} | {fmt(s.max)} |"
            for t, s in ((t, Summary.of(v)) for t, v in sorted(by_type.items()))
        ),
    ]
    return Section("event → SSE", [row], details)
