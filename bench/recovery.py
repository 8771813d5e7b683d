"""DESIGN §4: worker killed with SIGKILL → its executions running again elsewhere, ≤ 15 s.

A deployment with two `twintrack worker` processes per setting (the service defaults in a full
run; a short claim TTL in a quick one). Each sample starts an
execution of a 5 s `delay`, finds the worker holding its claim (claims → workers → pid), kills
it with SIGKILL and measures until the `execution.retrying` event's timestamp (the new attempt's
engine stamps it before running anything). The recovery audit row and the claim's expiry split
that time into "lease running out", "sweeper noticing" and "task re-delivered to a live worker".
A replacement worker is started after each sample, and the next sample waits until it has run
an execution (its consumer is in the group and its recovery sweeper runs): a kill while a
worker is still joining would measure its start-up, not recovery.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from bench.config import Mode, Sizes
from bench.drive import start
from bench.flows import long_delay
from bench.infra import Deployment, Servers, deploy, progress
from bench.report import Row, Section
from bench.sse import subscribe
from bench.stats import Summary, fmt
from twintrack.adapters.postgres.tables import ExecutionClaimRow, ExecutionRecoveryRow
from twintrack.config import Settings

GOAL_S = 15.0
DELAY_MS = 5000


@dataclass(frozen=True)
class Sample:
    to_retrying_s: float  # kill → execution.retrying (engine timestamp)
    to_expiry_s: float  # kill → the claim's expires_at (as it stood at the kill)
    to_swept_s: float  # kill → recovery took the claim back (audit row)
    retrying_seen_s: float  # kill → execution.retrying received on SSE
    outcome: str


async def _claim_expiry(deployment: Deployment, execution_id: str) -> float:
    rows = await deployment.query(
        select(ExecutionClaimRow.expires_at).where(ExecutionClaimRow.execution_id == execution_id)
    )
    return float(rows[0].expires_at.timestamp())


async def _swept_at(deployment: Deployment, execution_id: str) -> float:
    rows = await deployment.query(
        select(ExecutionRecoveryRow.recovered_at).where(
            ExecutionRecoveryRow.execution_id == execution_id
        )
    )
    return float(rows[0].recovered_at.timestamp()) if rows else float("nan")


async def _holder(deployment: Deployment, execution_id: str) -> int:
    for _ in range(200):
        pid = await deployment.claim_holder_pid(execution_id)
        if pid is not None:
            return pid
        await asyncio.sleep(0.01)
    raise RuntimeError(f"no worker holds {execution_id}")


async def _one(deployment: Deployment, flow_id: str) -> Sample:
    api = deployment.api
    execution_id = (await api.create(flow_id))["id"]
    async with asyncio.timeout(120), subscribe(api, execution_id) as stream:
        await start(api, execution_id)
        await stream.until(
            lambda r: r.type == "node.started" and r.event["data"]["node_id"] == "wait"
        )
        pid = await _holder(deployment, execution_id)
        expiry = await _claim_expiry(deployment, execution_id)
        victim = next(p for p in deployment.workers if p.pid == pid)
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        victim.wait()
        deployment.workers.remove(victim)
        retrying = await stream.until_type("execution.retrying")
        terminal = await stream.until_terminal()
    swept = await _swept_at(deployment, execution_id)
    return Sample(
        retrying.stamped - killed,
        expiry - killed,
        swept - killed,
        retrying.at - killed,
        terminal.type.removeprefix("execution."),
    )


async def _variant(
    found: Servers, mode: Mode, sizes: Sizes, log_dir: Path, settings: Mapping[str, str]
) -> list[Sample]:
    samples = []
    async with deploy(found, mode, log_dir, settings) as deployment:
        flow_id = await deployment.api.create_flow(long_delay(DELAY_MS))
        for i in range(sizes.recovery_runs):
            sample = await _one(deployment, flow_id)
            progress(
                f"recovery {dict(settings)} #{i + 1}: retrying {sample.to_retrying_s:.2f}s "
                f"after the kill (claim expiry {sample.to_expiry_s:.2f}s, "
                f"swept {sample.to_swept_s:.2f}s), {sample.outcome}"
            )
            samples.append(sample)
            replacement = deployment.spawn_worker()
            await deployment.wait_registered([replacement])
            await deployment.wait_serving([replacement])
    return samples


def _label(settings: Mapping[str, str], mode: Mode) -> str:
    """The variant's settings; for none, the recovery settings in force (the service defaults,
    unless `--set` changed them for every mode)."""
    if settings:
        return ", ".join(f"{k}={v}" for k, v in settings.items())
    fields = Settings.model_fields
    names = ("CLAIM_TTL_S", "RECOVERY_SWEEP_INTERVAL_S")
    values = {n: mode.env.get(n, f"{fields[n.lower()].default:g}") for n in names}
    shown = ", ".join(f"{n}={v}" for n, v in values.items())
    changed = any(n in mode.env for n in names)
    return shown if changed else f"service defaults: {shown}"


async def measure(found: Servers, mode: Mode, sizes: Sizes, log_dir: Path) -> Section:
    section = Section("recovery after SIGKILL")
    section.details.append(
        f"{sizes.recovery_runs} kill(s) per setting, seconds after the SIGKILL "
        f"(a {DELAY_MS / 1000:g} s `delay` running on the killed worker):"
    )
    section.details += [
        "",
        "| settings | → claim expiry | → sweeper took it back | → `execution.retrying` "
        "(engine) | → seen on SSE | ended |",
        "|---|---|---|---|---|---|",
    ]
    for settings in sizes.recovery_variants:
        progress(f"recovery: {_label(settings, mode)}, {sizes.recovery_runs} kill(s)")
        samples = await _variant(found, mode, sizes, log_dir, settings)
        to_retrying = Summary.of([s.to_retrying_s for s in samples])
        section.rows.append(
            Row(
                "recovery-" + (_label(settings, mode) if settings else "defaults"),
                f"worker SIGKILLed → execution retrying elsewhere ({_label(settings, mode)}), "
                f"worst of {len(samples)}",
                f"≤ {GOAL_S:g} s",
                f"{fmt(to_retrying.max)} s (median {fmt(to_retrying.p50)} s)",
                to_retrying.max <= GOAL_S,
                (to_retrying.max, to_retrying.p50),
            )
        )
        section.details += [
            f"| {_label(settings, mode)} | {fmt(s.to_expiry_s)} | {fmt(s.to_swept_s)} | "
            f"{fmt(s.to_retrying_s)} | {fmt(s.retrying_seen_s)} | {s.outcome} |"
            for s in samples
        ]
    return section
