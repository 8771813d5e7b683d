"""`twintrack compare`: run one flow on both tracks of a running deployment, side by side.

Scientist-style, but against the real thing: the flow is created through the API, then run
`--runs` times on each track (an admin key picks the track on create), each run subscribed to
its SSE stream before it is started and followed to its terminal event, all through
`twintrack.client` (its retries, its resuming event streams, its long-poll for the final row).
The Kafka track is the control, DBOS the candidate. What must agree:

- final statuses: the same multiset on both tracks (any run ending differently is a mismatch);
- outputs: the same multiset of outputs (deterministic flows: every run equal);
- event streams, normalized by `twintrack.domain.comparison` (ids, timestamps, durations, the track
  itself masked; the same normalization as the comparison suite): every DBOS stream must be one
  the Kafka track produced too. Streams the control produces in several forms are noise, as in
  Diffy's control-vs-control run, not a difference. By default streams are compared per node
  (`--ordering per_node`), so concurrent nodes finishing in another order are not a mismatch;
  `--ordering strict` compares event for event. Each stream must also keep the stream guarantee
  (indices 0..n-1, one terminal event, last): a run that breaks it, or never ends, fails.

Latency is read from the events' own timestamps (`execution.created` -> `execution.started`,
`execution.started` -> the terminal event), so it measures the deployment, not this client.

Exit codes: 0 everything matches, 1 any mismatch (or a run that did not finish), 2 the
comparison could not run (bad file or options, invalid flow, key refused, API unreachable).
Flows with side effects (`tally`, `emit`) run 2N times for real, and a `tally` count differs
from run to run by nature: compare effect-free flows, or read such differences knowingly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from twintrack.domain.comparison import Ordering
from twintrack.tooling.compare_report import (
    TERMINAL_TYPES,
    TRACKS,
    Events,
    Report,
    RunResult,
    build_report,
    percentile,
)

if TYPE_CHECKING:
    from rich.console import Console

    from twintrack.client import AsyncClient, TwintrackError

API_URL_ENV = "TWINTRACK_API_URL"  # the same as twintrack.client's (imported lazily)
API_KEY_ENV = "TWINTRACK_API_KEY"
DEFAULT_API_URL = "http://127.0.0.1:8000"
# A comparison rides out a blip of the deployment (an API process restarting), but a wrong
# `--api` should not keep the operator waiting long for "cannot reach".
RETRY_DEADLINE_S = 5.0
EXIT_MATCH, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The comparison cannot run at all (exit 2); the message says what to fix."""

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)


def _problem(exc: TwintrackError) -> tuple[str, list[str]]:
    """The API's refusal in a line, and each of its `details` as `location: message`."""
    details = []
    for item in exc.details if isinstance(exc.details, list) else []:
        if isinstance(item, dict):
            where = item.get("location") or ""
            details.append(f"{where}: {item.get('message')}" if where else str(item.get("message")))
        else:
            details.append(str(item))
    return str(exc), details


class Runner:
    """The few API calls a comparison makes, through `twintrack.client` (retries included)."""

    def __init__(self, client: AsyncClient, timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s

    async def create_flow(self, flow: Any) -> str:
        from twintrack.client import ConnectionFailed, TwintrackError

        try:
            return (await self.client.create_flow(flow)).id
        except ConnectionFailed:
            raise
        except TwintrackError as exc:
            message, details = _problem(exc)
            raise UsageError(f"the API refused the flow ({message})", details) from None

    async def run(self, flow_id: str, track: str, run: int, inputs: dict[str, Any]) -> RunResult:
        from twintrack.client import ConnectionFailed, TwintrackError

        result = RunResult(track=track, run=run)
        options = {"inputs": inputs} if inputs else None
        try:
            created = await self.client.create_execution(flow_id, options=options, track=track)
        except ConnectionFailed:
            raise
        except TwintrackError as exc:
            message, details = _problem(exc)
            hint = ""
            if exc.status_code == 403:
                hint = " (use an admin key: `twintrack keys create --owner NAME --admin`)"
            raise UsageError(
                f"creating a {track} execution failed: {message}{hint}", details
            ) from None
        result.execution_id = created.id
        try:
            async with asyncio.timeout(self.timeout_s):
                result.events = await self._start_and_follow(created.id)
                # The stream holds its terminal event until the row shows the ending, so this
                # long-poll answers at once.
                record = await self.client.wait(created.id)
        except TimeoutError:
            result.status = "timeout"
            result.problem = f"did not end within {self.timeout_s:g}s"
            await self._stop(created.id)
            return result
        except Exception as exc:  # one broken run is a finding, not the end of the comparison
            result.problem = f"{type(exc).__name__}: {exc}"
            await self._stop(created.id)
            return result
        result.status = record.status.value
        result.outputs = record.outputs
        return result

    async def _stop(self, execution_id: str) -> None:
        """Best effort: a run given up on should not keep running (or queued) unwatched."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.client.stop(execution_id, reason="twintrack compare gave up on this run")

    async def _start_and_follow(self, execution_id: str) -> Events:
        """Subscribe first (the stream's first event, `execution.created`, is there from the
        create on), then start; the stream ends after the terminal event."""
        stream = self.client.events(execution_id)
        try:
            first = await anext(stream)
            await self.client.start(execution_id)
            events = [first.model_dump(mode="json")]
            events += [event.model_dump(mode="json") async for event in stream]
        finally:
            await stream.aclose()
        if events[-1].get("type") not in TERMINAL_TYPES:
            raise RuntimeError("the event stream ended before the terminal event")
        return events


async def run_comparison(
    client: Runner,
    flow: Any,
    runs: int,
    inputs: dict[str, Any],
    on_result: Callable[[RunResult], None],
) -> list[RunResult]:
    """Create the flow, then run it `runs` times per track, one execution at a time.

    One at a time so neither track's latency includes the other's load; the track that goes
    first alternates from run to run so neither always runs on a warmer deployment.
    """
    flow_id = await client.create_flow(flow)
    results: list[RunResult] = []
    for run in range(runs):
        order = TRACKS if run % 2 == 0 else TRACKS[::-1]
        for track in order:
            result = await client.run(flow_id, track, run, inputs)
            results.append(result)
            on_result(result)
    return results


# -- the verdict -----------------------------------------------------------------------------


def _statuses(counts: Counter[str]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "-"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _latency(values: list[float]) -> str:
    return f"{_ms(percentile(values, 50))} / {_ms(percentile(values, 95))} ms"


def _verdict(equal: bool) -> str:
    return "[green]equal[/green]" if equal else "[bold red]DIFFERENT[/bold red]"


def render_report(report: Report, console: Console) -> None:
    """One table, a column per track, then any diff and the one-line verdict."""
    from rich.markup import escape
    from rich.table import Table

    kafka, dbos = (report.summaries[t] for t in TRACKS)
    table = Table(title=f"twintrack compare: {report.runs} run(s) per track")
    table.add_column("")
    for track in TRACKS:
        table.add_column(track)
    table.add_column("kafka vs dbos")
    table.add_row(
        "final status",
        _statuses(kafka.statuses),
        _statuses(dbos.statuses),
        _verdict(report.statuses_equal),
    )
    table.add_row(
        "outputs",
        f"{len(kafka.outputs)} distinct",
        f"{len(dbos.outputs)} distinct",
        _verdict(report.outputs_equal),
    )
    mismatched = len(report.stream_mismatches)
    table.add_row(
        "event stream (normalized)",
        f"{kafka.variants} variant(s)",
        f"{dbos.variants} variant(s)",
        _verdict(not mismatched) + (f" in {mismatched} run(s)" if mismatched else ""),
    )
    table.add_row(
        "create→start p50 / p95",
        _latency(kafka.create_to_start),
        _latency(dbos.create_to_start),
        "",
    )
    table.add_row(
        "start→end p50 / p95", _latency(kafka.start_to_end), _latency(dbos.start_to_end), ""
    )
    console.print(table)
    for summary in (kafka, dbos):
        for problem in summary.problems:
            console.print(f"[red]{summary.track} {escape(problem)}[/red]", highlight=False)
    if report.outputs_diff:
        console.print("outputs differ:", highlight=False)
        console.print(report.outputs_diff, markup=False, highlight=False)
    if report.stream_diff:
        console.print("event streams differ (first mismatch):", highlight=False)
        console.print(report.stream_diff, markup=False, highlight=False)
    if report.ok:
        console.print(f"[green]MATCH[/green]: both tracks agree on all {report.runs} run(s)")
    else:
        failed = [
            name
            for name, equal in (
                ("status", report.statuses_equal),
                ("outputs", report.outputs_equal),
                ("event stream", not report.stream_mismatches),
                (f"{report.problem_runs} run(s) with problems", not report.problem_runs),
            )
            if not equal
        ]
        console.print(f"[bold red]MISMATCH[/bold red]: {', '.join(failed)}")


# -- the command -----------------------------------------------------------------------------


def _load_flow(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None


def _load_inputs(inputs: str | None) -> dict[str, Any]:
    if inputs is None:
        return {}
    try:
        value = json.loads(inputs)
    except ValueError as exc:
        raise UsageError(f"--inputs is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError('--inputs must be a JSON object of node id -> value, e.g. {"x": 1}')
    return value


async def _compare(
    flow: Any,
    runs: int,
    inputs: dict[str, Any],
    api: str,
    key: str,
    timeout_s: float,
    ordering: Ordering,
) -> Report:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from twintrack.client import AsyncClient, ConnectionFailed, RetryPolicy

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        console=Console(stderr=True),
    )
    started = time.monotonic()
    retry = RetryPolicy(deadline_s=RETRY_DEADLINE_S)
    async with AsyncClient(api, key, retry=retry) as client:
        runner = Runner(client, timeout_s)
        with progress:
            task = progress.add_task("comparing", total=runs * len(TRACKS), last="")

            def advance(result: RunResult) -> None:
                last = f"{result.track} run {result.run + 1}: {result.status}"
                progress.update(task, advance=1, last=last)

            try:
                results = await run_comparison(runner, flow, runs, inputs, advance)
            except ConnectionFailed as exc:
                raise UsageError(f"cannot reach the API at {api}: {exc.message}") from None
    elapsed = time.monotonic() - started
    Console(stderr=True).print(f"{len(results)} executions in {elapsed:.1f}s", highlight=False)
    return build_report(results, runs, ordering)


def compare(
    flow_file: Annotated[Path, typer.Argument(metavar="FLOW.json", help="The flow to compare.")],
    runs: Annotated[int, typer.Option(min=1, max=10_000, help="Runs per track.")] = 10,
    inputs: Annotated[
        str | None, typer.Option(help='Values for const nodes by id, as JSON: {"node": 1}')
    ] = None,
    api: Annotated[
        str, typer.Option(envvar=API_URL_ENV, help="Base URL of the deployment's API.")
    ] = DEFAULT_API_URL,
    key: Annotated[
        str | None,
        typer.Option(envvar=API_KEY_ENV, help="An admin API key (it picks each run's track)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds one run may take to reach its end.")
    ] = 60.0,
    ordering: Annotated[
        Ordering,
        typer.Option(
            help="per_node: each node's events, and the execution's, in order (concurrent "
            "nodes may interleave differently); strict: event for event."
        ),
    ] = Ordering.PER_NODE,
) -> None:
    """Run FLOW.json on both tracks of a running deployment and compare them side by side.

    Exit 0: all matched. 1: a mismatch (status, outputs or event stream). 2: could not run.
    """
    try:
        if not key:
            raise UsageError(f"an admin API key is needed: --key or {API_KEY_ENV}")
        flow = _load_flow(flow_file)
        parsed_inputs = _load_inputs(inputs)
        report = asyncio.run(
            _compare(flow, runs, parsed_inputs, api.rstrip("/"), key, timeout, ordering)
        )
    except UsageError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        for detail in exc.details:
            typer.echo(f"  - {detail}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    from rich.console import Console

    render_report(report, Console(width=None if sys.stdout.isatty() else 120))
    raise typer.Exit(EXIT_MATCH if report.ok else EXIT_MISMATCH)
