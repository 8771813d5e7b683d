"""DESIGN §4: idle worker RSS (≤ 150 MB).

The deployment's `twintrack worker` processes have just registered and have run nothing yet:
after `idle_s` more seconds (consumer joined, heartbeats going) VmRSS is read from /proc.
`after_load` reads the same processes again at the end, for comparison.
"""

from __future__ import annotations

import asyncio

from bench.config import Sizes
from bench.infra import Deployment, progress
from bench.procs import rss_mib
from bench.report import Row, Section
from bench.stats import fmt

GOAL_MB = 150.0
_MIB_PER_MB = 1e6 / 2**20


async def measure(deployment: Deployment, sizes: Sizes) -> Section:
    progress(f"rss: {len(deployment.workers)} registered workers idle for {sizes.idle_s:g}s")
    await asyncio.sleep(sizes.idle_s)
    values = {proc.pid: rss_mib(proc.pid) for proc in deployment.workers}
    worst = max(values.values())
    progress(f"rss: {', '.join(f'{v:.1f} MiB' for v in values.values())}")
    row = Row(
        "rss",
        "idle worker RSS (VmRSS of `twintrack worker` after registering + idle)",
        f"≤ {GOAL_MB:g} MB",
        f"{fmt(worst / _MIB_PER_MB)} MB ({fmt(worst)} MiB)",
        worst / _MIB_PER_MB <= GOAL_MB,
        (worst / _MIB_PER_MB,),
    )
    details = [
        f"{len(values)} worker processes, read {sizes.idle_s:g} s after they registered, "
        "before any execution: " + ", ".join(f"{fmt(v)} MiB" for v in values.values()) + "."
    ]
    return Section("idle worker RSS", [row], details)


def after_load(deployment: Deployment) -> Section:
    values = [rss_mib(p.pid) for p in deployment.workers if p.poll() is None]
    row = Row(
        "rss-after",
        "worker RSS after all the runs above (information)",
        "-",
        f"{fmt(max(values) / _MIB_PER_MB)} MB" if values else "n/a",
        None,
        (max(values) / _MIB_PER_MB,) if values else (),
    )
    return Section("worker RSS after load", [row])
