"""DESIGN §4: sustained throughput of 3-node flows, everything on this machine, ≥ 200/s.

The load generator (`bench.loadgen`, its own process) runs many clients that create and start
executions back to back for a fixed time, against the deployment's API: in this process with two
`twintrack worker` processes running them (split shape), or the one `twintrack dev` process that
serves the API and runs them too (dev shape). Completions are counted in the database every
0.25 s; the rate is the completions inside the load window divided by its length. The backlog is
what was started but not finished when the window closed; then the run waits for it to drain.
CPU use of each process over the window, per finished execution, says where the time went.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from bench import cpu as cpu_rows
from bench.config import DEV, Sizes
from bench.dbos_logs import contention_line
from bench.drive import warm_up
from bench.flows import three_nodes
from bench.infra import BENCH_ROLE, LOADGEN, Deployment, cpu_groups, progress
from bench.procs import CpuMeter
from bench.report import Row, Section
from bench.stats import fmt
from twintrack.adapters.postgres.tables import ExecutionRow

GOAL_PER_S = 200.0
SAMPLE_EVERY_S = 0.25
_TERMINAL = ("completed", "failed", "stopped")
_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Count:
    at: float
    finished: int
    failed: int
    total: int

    @property
    def backlog(self) -> int:
        return self.total - self.finished


async def _count(deployment: Deployment, flow_id: str) -> Count:
    rows = await deployment.query(
        select(ExecutionRow.status, func.count())
        .where(ExecutionRow.flow_id == flow_id)
        .group_by(ExecutionRow.status)
    )
    by_status = {str(status): int(n) for status, n in rows}
    return Count(
        time.time(),
        sum(by_status.get(s, 0) for s in _TERMINAL),
        by_status.get("failed", 0) + by_status.get("stopped", 0),
        sum(by_status.values()),
    )


def _at(samples: list[Count], moment: float) -> Count:
    """The last sample taken at or before `moment` (the first one if none)."""
    before = [s for s in samples if s.at <= moment]
    return before[-1] if before else samples[0]


async def measure(deployment: Deployment, sizes: Sizes) -> Section:
    api = deployment.api
    flow_id = await api.create_flow(three_nodes())
    await warm_up(api, flow_id, sizes.warmup)  # both workers in the group and taking tasks
    clients, duration = sizes.throughput_clients, sizes.throughput_s
    progress(f"throughput: {clients} clients for {duration:g}s")
    loadgen = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.loadgen",
        f"--url={deployment.base_url}",
        f"--key={api.key}",
        f"--flow={flow_id}",
        f"--clients={clients}",
        f"--duration={duration}",
        cwd=_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    meter = CpuMeter({LOADGEN: [loadgen.pid], **cpu_groups(deployment)})
    meter.start()
    cpu_began = time.monotonic()
    samples = [await _count(deployment, flow_id)]  # the warm-up runs are all finished
    output = asyncio.create_task(loadgen.communicate())
    while not output.done():
        await asyncio.sleep(SAMPLE_EVERY_S)
        samples.append(await _count(deployment, flow_id))
    cpu_wall = time.monotonic() - cpu_began
    cpu = meter.stop(cpu_wall)
    stdout, _ = output.result()
    if loadgen.returncode != 0:
        raise RuntimeError(f"load generator exited {loadgen.returncode}")
    load = json.loads(stdout.decode().strip().splitlines()[-1])
    # The load generator has exited (and was reaped) before the meter stopped: it reports its
    # own CPU time, which the meter had counted as "other processes".
    cpu[LOADGEN] = float(load["cpu_s"]) / cpu_wall
    cpu["other processes"] = max(cpu["other processes"] - cpu[LOADGEN], 0.0)
    began, ended = float(load["began"]), float(load["ended"])
    window = ended - began
    first, last = _at(samples, began), _at(samples, ended)
    done = last.finished - first.finished
    rate = done / window
    progress(f"throughput: {rate:.1f}/s, backlog {last.backlog}; draining")
    drain_began = time.time()
    drained = last
    while drained.backlog and time.time() - drain_began < sizes.drain_timeout_s:
        await asyncio.sleep(SAMPLE_EVERY_S)
        drained = await _count(deployment, flow_id)
    overall = drained.finished / max(drained.at - began, 1e-9)
    shape = deployment.shape
    where = "one `twintrack dev` process" if shape == DEV else f"{len(deployment.workers)} workers"
    row = Row(
        "throughput" if shape != DEV else "throughput-dev",
        f"sustained throughput, 3-node flows, {clients} clients x {duration:g} s, "
        f"{where} (backlog at end)",
        f"≥ {GOAL_PER_S:g} executions/s",
        f"{fmt(rate)} /s (backlog {last.backlog})",
        rate >= GOAL_PER_S,
        (rate,),
    )
    # The bench process only counts completions in the dev shape: not one of the deployment's.
    ms = cpu_rows.per_execution_ms(cpu, cpu_wall, done, frozenset({BENCH_ROLE}))
    # The load generator's own figure for the window, without its start-up's imports.
    ms[LOADGEN] = float(load.get("cpu_window_s", load["cpu_s"])) * 1000 / max(done, 1)
    per_second = [
        _at(samples, began + s + 1).finished - _at(samples, began + s).finished
        for s in range(int(window))
    ]
    details = [
        f"- window {window:.1f} s: {load['created']} created, {load['started']} started "
        f"({load['started'] / window:.1f}/s offered), {last.finished - first.finished} finished "
        f"inside it ({rate:.1f}/s); {load['errors']} request errors"
        + (f" (first: {load['first_errors'][0]})" if load["errors"] else ""),
        f"- backlog when the window closed: {last.backlog}; after "
        f"{drained.at - drain_began:.1f} s of draining: {drained.backlog}; "
        f"failed or stopped: {drained.failed}; everything, start to drained: {overall:.1f}/s",
        "- completions per second of the window: " + ", ".join(str(n) for n in per_second),
        f"- request latency under load (load generator): create p50 "
        f"{fmt(load['create_ms_p50'] or float('nan'))} / p99 "
        f"{fmt(load['create_ms_p99'] or float('nan'))} ms, start p50 "
        f"{fmt(load['start_ms_p50'] or float('nan'))} / p99 "
        f"{fmt(load['start_ms_p99'] or float('nan'))} ms",
        "- CPU over the window, in cores (2 = the whole machine): "
        + ", ".join(f"{name} {value:.2f}" for name, value in cpu.items()),
        "- CPU per finished execution (the load generator's over the window only): "
        + ", ".join(f"{name} {value:.1f} ms" for name, value in ms.items()),
    ]
    if deployment.mode.track == "dbos" and deployment.log_dir is not None:
        details.append("- " + contention_line(deployment.log_dir))
    title = "throughput" if shape != DEV else "throughput (dev shape)"
    return Section(title, [row, *cpu_rows.rows(shape, ms)], details)
