"""The bare baselines: each track's library alone, doing the bench's work, in the same run.

A baseline is a column of the results table (`ModeResult.baseline`), shaped like the split
deployment: `WORKER_PROCESSES` worker processes of its own (`python -m bench.bare_kafka worker`,
`python -m bench.bare_dbos worker`) and a client process in place of the API and the load
generator. The client first measures latency (one at a time, after a warm-up that has every
worker serving), then throughput (`Sizes.throughput_clients` for `Sizes.throughput_s`, at most
`IN_FLIGHT` ahead of the work done) while the CPU of every process is metered. Its rows use the
split shape's keys, so each mode's ratio over its library sits on the same line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import bare_kafka
from bench import cpu as cpu_rows
from bench.bound import libpq_url
from bench.config import DEPLOYMENT_ENV, SPLIT, WORKER_PROCESSES, Sizes
from bench.dbos_logs import contention_line
from bench.infra import (
    BROKER,
    LOADGEN,
    Servers,
    create_database,
    drop_database,
    progress,
    server_groups,
    worker_role,
)
from bench.latency import GOAL_P50_MS, GOAL_P99_MS
from bench.procs import CpuMeter
from bench.report import ModeResult, Row, Section, failed_section
from bench.stats import Summary, fmt
from bench.throughput import GOAL_PER_S
from twintrack.config import Settings

_ROOT = Path(__file__).resolve().parents[1]
READY_S = 90.0
CONCURRENCY = int(DEPLOYMENT_ENV["WORKER_CONCURRENCY"])
#: The throughput client's cap on work sent and not yet done: every worker slot busy and as much
#: again queued. twintrack's load generator is paced by the API's answers (its backlog stays
#: small); an unbounded flood would measure a growing backlog, not the library.
IN_FLIGHT = 2 * WORKER_PROCESSES * CONCURRENCY


@dataclass(frozen=True)
class Library:
    """One baseline: its column name, the track it underlies, and how to run it."""

    name: str
    track: str
    module: str
    description: str


KAFKA = Library(
    "bare Kafka",
    "kafka",
    "bench.bare_kafka",
    "plain aiokafka: produce (acks=all) → consume (one group, 2 consumer processes) → claim row "
    "INSERT + done UPDATE in PostgreSQL (2 transactions) → offset commit",
)
DBOS = Library(
    "bare DBOS",
    "dbos",
    "bench.bare_dbos",
    "plain DBOS 3.4: `DBOSClient.enqueue` of a 3-step workflow on a DBOS queue served by "
    "2 launched DBOS processes",
)
LIBRARIES: tuple[Library, ...] = (KAFKA, DBOS)
#: Plain DBOS has no wake-up of its own: it polls, and 50 ms is the interval the DBOS track
#: itself used before it was woken by NOTIFY (our 0.5 s default is only its fallback).
BARE_DBOS_POLL_S = 0.05
#: the baseline each track is built on
OF_TRACK: Mapping[str, str] = {lib.track: lib.name for lib in LIBRARIES}


async def _arguments(lib: Library, found: Servers, url: str, tag: str) -> list[str]:
    """Command-line arguments both roles take; sets up what the library needs first."""
    defaults = Settings.model_fields
    if lib is KAFKA:
        partitions = int(defaults["kafka_partitions"].default)
        topic = f"{tag}.tasks"
        await bare_kafka.prepare(url, found.broker.bootstrap_servers, topic, partitions)
        extra = ["--bootstrap", found.broker.bootstrap_servers, "--topic", topic]
        if found.broker.capabilities.idempotence:
            extra.append("--idempotence")
        return ["--url", url, *extra]
    limit = defaults["dbos_queue_concurrency"].default
    return [
        "--url",
        url,
        "--poll",
        str(BARE_DBOS_POLL_S),
        *(("--global-concurrency", str(limit)) if limit is not None else ()),
    ]


def settings_of(lib: Library) -> dict[str, str]:
    shown = {"worker processes": str(WORKER_PROCESSES), "concurrency per worker": str(CONCURRENCY)}
    if lib is DBOS:
        defaults = Settings.model_fields
        shown["queue polling interval (s)"] = str(BARE_DBOS_POLL_S)
        shown["global concurrency"] = str(defaults["dbos_queue_concurrency"].default or "none")
    return shown


@contextlib.asynccontextmanager
async def _workers(
    lib: Library, common: Sequence[str], names: Sequence[str], logs: Path
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs: list[asyncio.subprocess.Process] = []
    try:
        for name in names:
            log = (logs / f"{name}.log").open("wb")
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                lib.module,
                "worker",
                *common,
                "--name",
                name,
                "--concurrency",
                str(CONCURRENCY),
                cwd=_ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
            log.close()
            procs.append(proc)
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), READY_S)
            if line.strip() != b"ready":
                raise RuntimeError(f"{lib.name} {name} did not start: {_tail(logs / name)}")
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


def _tail(stem: Path) -> str:
    path = stem.with_suffix(".log")
    return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"


async def _client(
    lib: Library,
    common: Sequence[str],
    options: Sequence[str],
    groups: Mapping[str, list[int]] | None = None,
) -> tuple[dict[str, Any], dict[str, float], float]:
    """Run the client to its end; (its JSON, the cores of `groups` and the client over its life,
    that life in seconds)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        lib.module,
        "client",
        *common,
        *options,
        cwd=_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    loop = asyncio.get_running_loop()
    began = loop.time()
    meter = CpuMeter({LOADGEN: [proc.pid], **groups}) if groups is not None else None
    if meter is not None:
        meter.start()
    out, _ = await proc.communicate()
    wall = loop.time() - began
    cores = meter.stop(wall) if meter is not None else {}
    if proc.returncode != 0:
        raise RuntimeError(f"{lib.name} client exited {proc.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result, cores, wall


async def measure(found: Servers, lib: Library, sizes: Sizes, log_dir: Path) -> ModeResult:
    result = ModeResult(lib.name, settings_of(lib), track=lib.track, baseline=True)
    name = f"bench_bare_{uuid.uuid4().hex[:10]}"
    logs = log_dir / name
    logs.mkdir(parents=True)
    progress(f"baseline {lib.name}: starting")
    try:
        url = libpq_url(await create_database(found.postgres.url, name))
        try:
            result.sections = await _run(found, lib, sizes, url, name, logs)
        finally:
            await drop_database(found.postgres.url, name)
    except Exception as exc:
        progress(f"baseline {lib.name} failed")
        result.error = f"{type(exc).__name__}: {exc}"
        result.sections.append(failed_section(f"baseline {lib.name}", exc))
    return result


async def _run(
    found: Servers, lib: Library, sizes: Sizes, url: str, tag: str, logs: Path
) -> list[Section]:
    common = await _arguments(lib, found, url, tag)
    names = [f"bare-{i}" for i in range(1, WORKER_PROCESSES + 1)]
    async with _workers(lib, common, names, logs) as procs:
        progress(f"baseline {lib.name}: latency, {sizes.latency_runs} runs")
        latency, _, _ = await _client(
            lib,
            common,
            [
                "--phase=latency",
                f"--runs={sizes.latency_runs}",
                f"--warmup={sizes.warmup}",
                f"--workers={','.join(names)}",
            ],
        )
        groups = {worker_role(i): [p.pid] for i, p in enumerate(procs, 1)}
        servers = server_groups(url, found.broker.bootstrap_servers)
        if lib is DBOS:  # bare DBOS needs no broker: its idle CPU is not the library's
            servers.pop(BROKER, None)
        groups.update(servers)
        progress(
            f"baseline {lib.name}: throughput, {sizes.throughput_clients} clients "
            f"x {sizes.throughput_s:g}s"
        )
        load, cores, wall = await _client(
            lib,
            common,
            [
                "--phase=throughput",
                f"--clients={sizes.throughput_clients}",
                f"--seconds={sizes.throughput_s}",
                f"--in-flight={IN_FLIGHT}",
            ],
            groups,
        )
    sections = [_latency_section(lib, latency["latency_ms"])]
    sections.append(_throughput_section(load, cores, wall))
    if lib is DBOS:
        sections[-1].details.append(contention_line(logs))
    return sections


def _latency_section(lib: Library, samples: list[float]) -> Section:
    total = Summary.of(samples)
    progress(f"baseline {lib.name}: latency {total.line()}")
    row = Row(
        "latency",
        "create→completed, 3-node flow",
        f"≤ {GOAL_P50_MS:g} / ≤ {GOAL_P99_MS:g} ms",
        f"{fmt(total.p50)} / {fmt(total.p99)} ms",
        total.p50 <= GOAL_P50_MS and total.p99 <= GOAL_P99_MS,
        (total.p50, total.p99),
    )
    details = [
        f"{lib.description}.",
        "",
        f"Latency: {total.n} sequential runs after a warm-up in which every worker served; "
        f"from just before the send / enqueue to the worker's timestamp of its last piece of "
        f"work (the claim row's done UPDATE, the workflow's last step): {total.line()}.",
    ]
    return Section("latency", [row], details)


def _throughput_section(load: dict[str, Any], cores: dict[str, float], wall: float) -> Section:
    window = float(load["ended"]) - float(load["began"])
    done = int(load["done_in_window"])
    rate = done / window
    progress(f"baseline: throughput {rate:.1f}/s, backlog {load['backlog']}")
    # The client exited before the meter stopped (it counted as "other"): it reports its own.
    cores[LOADGEN] = float(load["cpu_s"]) / wall
    cores["other processes"] = max(cores.get("other processes", 0.0) - cores[LOADGEN], 0.0)
    ms = cpu_rows.per_execution_ms(cores, wall, done, frozenset({LOADGEN}))
    ms[LOADGEN] = float(load["cpu_window_s"]) * 1000 / max(done, 1)
    row = Row(
        "throughput",
        "sustained throughput",
        f"≥ {GOAL_PER_S:g} executions/s",
        f"{fmt(rate)} /s (backlog {load['backlog']})",
        rate >= GOAL_PER_S,
        (rate,),
    )
    details = [
        f"Throughput: window {window:.1f} s, {load['sent']} sent ({load['sent'] / window:.1f}/s "
        f"offered), {done} done inside it ({rate:.1f}/s), backlog {load['backlog']}; "
        f"{load['errors']} errors"
        + (f" (first: {load['first_errors'][0]})" if load["errors"] else "")
        + ".",
        "",
        "CPU over the client's life, in cores: " + cpu_rows.cores_line(cores) + ".",
        "CPU per execution done in the window (the client's over the window only): "
        + ", ".join(f"{name} {value:.1f} ms" for name, value in ms.items())
        + ".",
    ]
    return Section("throughput", [row, *cpu_rows.rows(SPLIT, ms)], details)
