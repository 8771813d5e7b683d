"""DESIGN §4: command (pause, stop) sent → engine obeys, p99 ≤ 100 ms.

Each sample is a fresh execution of a long `delay` node, watched on SSE. Once its node has
started, the command is sent; the latency runs from just before the command's HTTP request to
the `timestamp` of the event by which the engine shows it obeyed (`execution.paused`,
`execution.stopped`), which the engine stamps when it acts. A paused sample is stopped after.
"""

from __future__ import annotations

import time

from bench.config import Sizes
from bench.drive import start
from bench.flows import long_delay
from bench.infra import Deployment, progress
from bench.report import Row, Section
from bench.sse import subscribe
from bench.stats import Summary, fmt

GOAL_P99_MS = 100.0
OBEYED = {"pause": "execution.paused", "stop": "execution.stopped"}


class Sample:
    def __init__(self) -> None:
        self.obeyed_ms: list[float] = []  # send → engine's event timestamp
        self.seen_ms: list[float] = []  # send → event received on SSE
        self.request_ms: list[float] = []  # the command's HTTP round trip (202)


async def _one(deployment: Deployment, flow_id: str, command: str, sample: Sample) -> None:
    api = deployment.api
    execution_id = (await api.create(flow_id))["id"]
    async with subscribe(api, execution_id) as stream:
        await start(api, execution_id)
        await stream.until(
            lambda r: r.type == "node.started" and r.event["data"]["node_id"] == "wait"
        )
        sent = time.time()
        status = await api.command(execution_id, command)
        acknowledged = time.time()
        if status != 202:
            raise RuntimeError(f"{command} {execution_id}: HTTP {status}")
        obeyed = await stream.until_type(OBEYED[command])
        sample.obeyed_ms.append((obeyed.stamped - sent) * 1000)
        sample.seen_ms.append((obeyed.at - sent) * 1000)
        sample.request_ms.append((acknowledged - sent) * 1000)
        if command != "stop":
            await api.command(execution_id, "stop")
            await stream.until_terminal()


async def measure(deployment: Deployment, sizes: Sizes) -> Section:
    flow_id = await deployment.api.create_flow(long_delay())
    samples = {command: Sample() for command in OBEYED}
    progress(f"commands: {sizes.command_runs} x pause and stop")
    for _ in range(sizes.command_runs):
        for command, sample in samples.items():
            await _one(deployment, flow_id, command, sample)
    obeyed = {c: Summary.of(s.obeyed_ms) for c, s in samples.items()}
    for command, summary in obeyed.items():
        progress(f"commands: {command}: {summary.line()}")
    row = Row(
        "commands",
        "command sent → engine obeys (event timestamp), p99: pause / stop",
        f"≤ {GOAL_P99_MS:g} ms",
        f"{fmt(obeyed['pause'].p99)} / {fmt(obeyed['stop'].p99)} ms",
        all(s.p99 <= GOAL_P99_MS for s in obeyed.values()),
        (obeyed["pause"].p99, obeyed["stop"].p99),
    )
    details = [
        f"{sizes.command_runs} samples per command, each on a fresh execution whose `delay` "
        "node is running; milliseconds from just before the HTTP request:",
        "",
        "| command | to engine's event timestamp p50 / p99 / max | to event on SSE p50 / p99 "
        "| HTTP round trip p50 / p99 |",
        "|---|---|---|---|",
    ]
    for command, sample in samples.items():
        o, s, r = (Summary.of(v) for v in (sample.obeyed_ms, sample.seen_ms, sample.request_ms))
        details.append(
            f"| {command} | {fmt(o.p50)} / {fmt(o.p99)} / {fmt(o.max)} | "
            f"{fmt(s.p50)} / {fmt(s.p99)} | {fmt(r.p50)} / {fmt(r.p99)} |"
        )
    return Section("commands", [row], details)
