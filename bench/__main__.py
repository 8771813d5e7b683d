"""`python -m bench [--quick] [--out docs/benchmarks.md] [--modes kafka] [--shapes split,dev]
[--only latency,...]`.

One run: the physical bound (`bound`: one-row commits of the run's PostgreSQL), the two bare
baselines (`baselines`: aiokafka + a claim row, plain DBOS 3.4), then per mode the split
deployment (every measurement), the dev deployment (latency and throughput) and recovery.

`--only soak [--soak-executions N]` runs the chaos soak instead (not part of a plain run: it
breaks its servers on purpose, so it brings its own; see `bench.soak`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path

from bench import (
    bare,
    bound,
    children,
    commands,
    event_latency,
    latency,
    recovery,
    rss,
    soak,
    soak_report,
    throughput,
)
from bench.chaos import SoakServers, soak_servers
from bench.config import (
    DEFAULT_MODES,
    DEV,
    DEV_MEASURES,
    FULL,
    MODES,
    QUICK,
    QUICK_SOAK,
    SHAPES,
    SOAK,
    SPLIT,
    Mode,
    Sizes,
    SoakSizes,
)
from bench.infra import Deployment, Servers, cpu_groups, deploy, deploy_dev, progress, servers
from bench.machine import code_revision, facts, load_average
from bench.procs import CpuMeter
from bench.report import (
    ModeResult,
    Section,
    failed_section,
    render,
    results_table,
    write_doc,
)
from twintrack.entrypoints.loop import run as run_loop
from twintrack.observability.logs import configure_logging

Measure = Callable[[Deployment, Sizes], Awaitable[Section]]

#: In order, on one deployment per mode; throughput last (it may leave a backlog behind).
ON_DEPLOYMENT: dict[str, Measure] = {
    "rss": rss.measure,
    "latency": latency.measure,
    "events": event_latency.measure,
    "commands": commands.measure,
    "children": children.measure,
    "throughput": throughput.measure,
}
BOUND, BASELINES = "bound", "baselines"
ALL = (BOUND, BASELINES, *ON_DEPLOYMENT, "recovery")
#: Only on request (`--only soak`): it restarts and stalls servers of its own.
SOAK_NAME = "soak"
_HIDDEN_SETTINGS = {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC_PREFIX"}
_failed = failed_section


async def _guarded(name: str, measure: Measure, deployment: Deployment, sizes: Sizes) -> Section:
    """Run one measurement; a failure becomes an error row. Notes the CPU it saw (noise)."""
    meter = CpuMeter(cpu_groups(deployment))
    meter.start()
    began = time.monotonic()
    try:
        section = await measure(deployment, sizes)
    except Exception as exc:
        progress(f"{name} failed; worker logs:\n{deployment.log_tail()}")
        return _failed(f"{name} ({deployment.shape} shape)", exc)
    cpu = meter.stop(time.monotonic() - began)
    if name != "throughput":  # it reports its own, with the load generator apart
        section.details += [
            "",
            f"CPU during this measurement ({time.monotonic() - began:.0f} s), in cores: "
            + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
            + ". *other processes*: CPU outside the benchmark's processes (other load, kernel).",
        ]
    return section


async def run_mode(
    found: Servers,
    mode: Mode,
    sizes: Sizes,
    only: Sequence[str],
    shapes: Sequence[str],
    log_dir: Path,
) -> ModeResult:
    result = ModeResult(mode.name, track=mode.track, library=bare.OF_TRACK.get(mode.track))
    if SPLIT in shapes and any(name in only for name in ON_DEPLOYMENT):
        await _on_deployment(found, mode, sizes, only, log_dir, result)
    dev_measures = [name for name in DEV_MEASURES if name in only]
    if DEV in shapes and dev_measures:
        await _on_dev(found, mode, sizes, dev_measures, log_dir, result)
    if "recovery" in only:
        try:
            result.sections.append(await recovery.measure(found, mode, sizes, log_dir))
        except Exception as exc:
            result.sections.append(_failed("recovery", exc))
    return result


def _shown(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in _HIDDEN_SETTINGS}


async def _on_deployment(
    found: Servers,
    mode: Mode,
    sizes: Sizes,
    only: Sequence[str],
    log_dir: Path,
    result: ModeResult,
) -> None:
    progress(f"mode {mode.name}: deploying (split shape: API + workers)")
    try:
        async with deploy(found, mode, log_dir) as deployment:
            result.settings = _shown(deployment.env)
            for name, measure in ON_DEPLOYMENT.items():
                if name in only:
                    result.sections.append(await _guarded(name, measure, deployment, sizes))
            if "throughput" in only:
                result.sections.append(rss.after_load(deployment))
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        result.sections.append(_failed("deployment", exc))


async def _on_dev(
    found: Servers,
    mode: Mode,
    sizes: Sizes,
    measures: Sequence[str],
    log_dir: Path,
    result: ModeResult,
) -> None:
    """The dev shape's measurements; a failure is an error row (the split column stands)."""
    progress(f"mode {mode.name}: deploying (dev shape: one `twintrack dev` process)")
    try:
        async with deploy_dev(found, mode, log_dir) as deployment:
            result.settings = result.settings or _shown(deployment.env)
            for name in measures:
                section = await _guarded(name, ON_DEPLOYMENT[name], deployment, sizes)
                result.sections.append(section)
    except Exception as exc:
        result.sections.append(_failed("dev deployment", exc))


async def _bound(found: Servers, sizes: Sizes) -> Section:
    try:
        return await bound.measure(found, sizes)
    except Exception as exc:
        return _failed(BOUND, exc)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small samples: a smoke test")
    parser.add_argument("--out", type=Path, help="rewrite the results block of this Markdown file")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    parser.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help=f"comma-separated, of: {', '.join(m.name for m in MODES)} (default: %(default)s)",
    )
    parser.add_argument(
        "--shapes",
        default=",".join(SHAPES),
        help=f"comma-separated, of: {', '.join(SHAPES)} (dev: {', '.join(DEV_MEASURES)} only)",
    )
    parser.add_argument(
        "--only", default=",".join(ALL), help=f"comma-separated, of: {', '.join(ALL)}"
    )
    parser.add_argument(
        "--soak-executions",
        type=int,
        metavar="N",
        help=f"executions per mode in the chaos soak (default {SOAK.executions}; quick "
        f"{QUICK_SOAK.executions})",
    )
    parser.add_argument(
        "--soak",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a chaos soak size (bench.config.SoakSizes field, e.g. rate=10, stall_s=5)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every deployment on top of the mode's (repeatable), for experiments",
    )
    args = parser.parse_args(argv)
    args.overrides = dict(item.split("=", 1) for item in args.set if "=" in item)
    if len(args.overrides) != len(args.set):
        parser.error("--set: expected NAME=VALUE")
    known = {m.name for m in MODES}
    args.mode_list = [
        replace(m, env={**m.env, **args.overrides})
        for m in MODES
        if m.name in args.modes.split(",")
    ]
    if not args.mode_list or set(args.modes.split(",")) - known:
        parser.error(f"--modes: expected some of {sorted(known)}")
    args.shape_list = args.shapes.split(",")
    if set(args.shape_list) - set(SHAPES):
        parser.error(f"--shapes: expected some of {', '.join(SHAPES)}")
    args.only_list = args.only.split(",")
    if set(args.only_list) - {*ALL, SOAK_NAME}:
        parser.error(f"--only: expected some of {', '.join((*ALL, SOAK_NAME))}")
    args.soak_sizes = QUICK_SOAK if args.quick else SOAK
    if args.soak_executions is not None:
        if args.soak_executions < 1:
            parser.error("--soak-executions: expected a positive number")
        args.soak_sizes = replace(args.soak_sizes, executions=args.soak_executions)
    try:
        args.soak_sizes = _soak_sizes(args.soak_sizes, args.soak)
    except ValueError as exc:
        parser.error(f"--soak: {exc}")
    return args


def _soak_sizes(sizes: SoakSizes, items: Sequence[str]) -> SoakSizes:
    """`sizes` with FIELD=VALUE overrides, each parsed as its field's default is typed."""
    numeric = {f.name for f in fields(SoakSizes) if f.name != "settings"}
    changes: dict[str, int | float | None] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or name not in numeric:
            raise ValueError(f"expected FIELD=VALUE with FIELD one of {sorted(numeric)}: {item!r}")
        current = getattr(SOAK, name)
        kind = float if isinstance(current, float) else int
        changes[name] = None if raw.lower() == "none" else kind(raw)
    return replace(sizes, **changes)  # type: ignore[arg-type]


async def _soak(own: SoakServers, mode: Mode, args: argparse.Namespace, logs: Path) -> Section:
    try:
        return soak_report.section(await soak.soak_mode(own, mode, args.soak_sizes, logs))
    except Exception as exc:
        return _failed(SOAK_NAME, exc)


async def _main(args: argparse.Namespace) -> tuple[list[ModeResult], list[Section]]:
    """(a column per mode, then the baselines; the machine-wide sections: the bound)."""
    sizes = QUICK if args.quick else FULL
    results: list[ModeResult] = []
    machine_wide: list[Section] = []
    baselines: list[ModeResult] = []
    with contextlib.ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="twintrack-bench-")))
        found = stack.enter_context(servers()) if set(args.only_list) & set(ALL) else None
        own = stack.enter_context(soak_servers()) if SOAK_NAME in args.only_list else None
        args.server_facts = found.describe() if found else []
        if own is not None:
            args.server_facts += [(f"{k} (soak, its own)", v) for k, v in own.servers.describe()]
        if found is not None and BOUND in args.only_list:
            machine_wide.append(await _bound(found, sizes))
        if found is not None and BASELINES in args.only_list:
            tracks = {m.track for m in args.mode_list}
            for lib in bare.LIBRARIES:
                if lib.track in tracks:
                    baselines.append(await bare.measure(found, lib, sizes, logs))
        for mode in args.mode_list:
            result = ModeResult(mode.name, track=mode.track)
            if found is not None:
                result = await run_mode(found, mode, sizes, args.only_list, args.shape_list, logs)
            if own is not None:
                result.sections.append(await _soak(own, mode, args, logs))
            results.append(result)
    return results + baselines, machine_wide


def _split(results: Sequence[ModeResult], soak_part: bool) -> list[ModeResult]:
    """The results with only the soak's sections (or only the others'), for their doc blocks."""
    return [
        replace(r, sections=[s for s in r.sections if (s.title == soak_report.TITLE) == soak_part])
        for r in results
        if not (soak_part and r.baseline)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    # The soak's API runs in this process: JSON logs, as its workers (see SoakSizes.settings).
    configure_logging("WARNING", "json" if SOAK_NAME in args.only_list else "console")
    began = time.monotonic()
    load_before = load_average()
    machine = [*facts(), ("code", code_revision())]
    # The API runs in this process: on the loop `twintrack api` would use with these settings.
    loop = args.overrides.get("EVENT_LOOP", os.environ.get("EVENT_LOOP", "asyncio"))
    machine.append(("API event loop", loop))
    results, machine_wide = run_loop(_main(args), loop)
    elapsed = time.monotonic() - began
    machine += [
        *args.server_facts,
        *((row.what, row.value) for section in machine_wide for row in section.rows),
        ("sizes", "quick (smoke test)" if args.quick else "full"),
        *([("soak sizes", str(args.soak_sizes))] if SOAK_NAME in args.only_list else []),
        ("load average (1, 5, 15 min)", f"before {load_before}; after {load_average()}"),
        ("run time", f"{elapsed:.0f} s"),
    ]
    command = " ".join(["uv run python -m bench", *(argv if argv is not None else sys.argv[1:])])
    print(results_table(results))
    for name, value in machine:
        print(f"- {name}: {value}")
    if args.out:
        if set(args.only_list) & set(ALL):
            block = render(_split(results, False), machine, command, machine_wide)
            write_doc(args.out, block)
        if SOAK_NAME in args.only_list:
            block = soak_report.render_block(_split(results, True), machine, command)
            soak_report.write_doc(args.out, block)
        progress(f"wrote {args.out}")
    if args.json:
        document = {
            "machine": machine,
            "results": [asdict(r) for r in results],
            "machine_wide": [asdict(s) for s in machine_wide],
        }
        args.json.write_text(json.dumps(document, indent=2))
    # A missed goal is a result, not a failure; a measurement that could not run is.
    rows = [row for res in results for row in res.rows]
    rows += [row for section in machine_wide for row in section.rows]
    return 1 if any(row.key.startswith("error-") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
