"""DESIGN §4: create→completed for the 3-node flow (const → math → output), p50 / p99.

N sequential executions after a warm-up. Each is what a user does: POST /v1/executions, open the
SSE stream, POST /start, read until the terminal event; the latency is from just before the
create request to the moment the terminal event reached the client. The breakdown splits it
into the HTTP calls and the engine's own timestamps.
"""

from __future__ import annotations

from bench.config import DEV, Sizes
from bench.drive import Run, run_once, warm_up
from bench.flows import three_nodes
from bench.infra import Deployment, progress
from bench.report import Row, Section
from bench.stats import Summary, fmt

GOAL_P50_MS, GOAL_P99_MS = 30.0, 100.0


def _ms(a: float, b: float) -> float:
    return (b - a) * 1000


def breakdown(runs: list[Run]) -> list[tuple[str, Summary]]:
    parts = {
        "total: create request → terminal event received": [
            _ms(r.t_create, r.terminal.at) for r in runs
        ],
        "POST /v1/executions (201)": [_ms(r.t_create, r.t_created) for r in runs],
        "open SSE (headers)": [_ms(r.t_created, r.t_opened) for r in runs],
        "POST /start (202)": [_ms(r.t_opened, r.t_started) for r in runs],
        "start request → terminal event received": [_ms(r.t_opened, r.terminal.at) for r in runs],
        "engine: queued → started (task delivery + claim)": [
            _ms(r.at("execution.queued").stamped, r.at("execution.started").stamped) for r in runs
        ],
        "engine: started → completed (3 nodes)": [
            _ms(r.at("execution.started").stamped, r.terminal.stamped) for r in runs
        ],
        "completed stamped → received on SSE": [r.terminal.delay_ms for r in runs],
    }
    return [(name, Summary.of(values)) for name, values in parts.items()]


async def measure(deployment: Deployment, sizes: Sizes) -> Section:
    api = deployment.api
    flow_id = await api.create_flow(three_nodes())
    progress(f"latency: warm-up ({sizes.warmup} runs)")
    await warm_up(api, flow_id, sizes.warmup)
    progress(f"latency: {sizes.latency_runs} sequential runs")
    runs = [await run_once(api, flow_id) for _ in range(sizes.latency_runs)]
    bad = [r for r in runs if r.terminal.type != "execution.completed"]
    if bad:
        raise RuntimeError(f"{len(bad)} runs did not complete: {bad[0].terminal.event}")
    parts = breakdown(runs)
    total = parts[0][1]
    progress(f"latency: {total.line()}")
    dev = deployment.shape == DEV
    where = "one `twintrack dev` process" if dev else f"API + {len(deployment.workers)} workers"
    row = Row(
        "latency-dev" if dev else "latency",
        f"create→completed, 3-node flow (POST create → terminal SSE event), {where}, p50 / p99",
        f"≤ {GOAL_P50_MS:g} / ≤ {GOAL_P99_MS:g} ms",
        f"{fmt(total.p50)} / {fmt(total.p99)} ms",
        total.p50 <= GOAL_P50_MS and total.p99 <= GOAL_P99_MS,
        (total.p50, total.p99),
    )
    details = [
        f"{sizes.latency_runs} sequential executions after {sizes.warmup} warm-up runs; "
        "milliseconds:",
        "",
        "| part | p50 | p99 | max | mean |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {fmt(s.p50)} | {fmt(s.p99)} | {fmt(s.max)} | {fmt(s.mean)} |"
            for name, s in parts
        ),
    ]
    return Section("create→completed" + (" (dev shape)" if dev else ""), [row], details)
