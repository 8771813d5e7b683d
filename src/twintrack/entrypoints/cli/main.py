"""The `twintrack` command (Typer). Each subcommand loads settings once and fails clearly."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from twintrack.entrypoints.cli.compare import compare
from twintrack.entrypoints.cli.executions import executions_app
from twintrack.entrypoints.cli.rollout import rollout_app
from twintrack.entrypoints.cli.support import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    fail,
    load_cli_settings,
)

if TYPE_CHECKING:  # imported where a verb runs: `--help` must not pay for them
    from twintrack.config import Settings
    from twintrack.domain.events import Event
    from twintrack.domain.execution import ExecutionOptions, ExecutionStatus
    from twintrack.nodes.base import Counters

app = typer.Typer(
    name="twintrack",
    help="Flow executions on a Kafka track and a DBOS track, side by side.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def run(
    flow_file: Annotated[Path, typer.Argument(metavar="FLOW.json", help="The flow to run.")],
    inputs: Annotated[
        str | None, typer.Option(help='Values for const nodes by id, as JSON: {"node": 1}')
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print events as JSON lines.")] = False,
    max_concurrency: Annotated[int, typer.Option(min=1, max=1000)] = 8,
) -> None:
    """Run a flow in this process and print its events (exit 0 completed, 1 failed, 2 invalid)."""
    from twintrack.domain.execution import ExecutionOptions, ExecutionStatus
    from twintrack.domain.flow import FlowValidationError, check_options, parse_flow_json
    from twintrack.nodes.registry import PluginError, default_registry

    settings = load_cli_settings()
    try:
        raw = flow_file.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {flow_file}: {exc.strerror}") from None
    try:
        registry = default_registry()
    except PluginError as exc:
        raise fail(str(exc)) from None
    try:
        parsed_inputs = _parse_inputs(inputs)
        flow = parse_flow_json(raw, registry)
        options = ExecutionOptions(inputs=parsed_inputs, max_concurrency=max_concurrency)
        check_options(flow, options)
    except FlowValidationError as exc:
        typer.echo(f"{flow_file}: the flow is invalid:", err=True)
        for issue in exc.issues:
            typer.echo(f"  - {issue}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    status = asyncio.run(_run_local(flow, options, settings, as_json))
    raise typer.Exit(EXIT_OK if status is ExecutionStatus.COMPLETED else EXIT_FAILED)


def _parse_inputs(inputs: str | None) -> dict[str, Any]:
    from twintrack.domain.flow import FlowValidationError, Issue

    if inputs is None:
        return {}
    try:
        value = json.loads(inputs)
    except json.JSONDecodeError as exc:
        raise FlowValidationError([Issue("--inputs", f"not valid JSON: {exc}")]) from None
    if not isinstance(value, dict):
        raise FlowValidationError([Issue("--inputs", "must be a JSON object of node id -> value")])
    return value


async def _run_local(
    flow: Any, options: ExecutionOptions, settings: Settings, as_json: bool
) -> ExecutionStatus:
    from twintrack.entrypoints.cli.render import render_line
    from twintrack.entrypoints.local import LocalRunner

    async def publish(event: Event) -> None:
        line = event.model_dump_json() if as_json else render_line(event)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    counters, dispose = await _counters(settings)
    runner = LocalRunner(
        flow, publish, options=options, counters=counters, max_depth=settings.execution_max_depth
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, runner.stop_all, "interrupted (Ctrl-C)")
    try:
        result = await runner.run()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await dispose()
    return result.status


async def _counters(settings: Settings) -> tuple[Counters | None, Any]:
    """Postgres counters when DATABASE_URL is set (migrated), else in-memory ones."""

    async def nothing() -> None:
        return None

    if not settings.database_url:
        return None, nothing
    from twintrack.adapters.postgres.counters import PostgresCounterStore
    from twintrack.adapters.postgres.db import create_engine, create_session_factory

    engine = create_engine(settings.database_url)
    return PostgresCounterStore(create_session_factory(engine)), engine.dispose


@app.command()
def migrate() -> None:
    """Bring the database at DATABASE_URL to the latest schema (Alembic upgrade head)."""
    settings = load_cli_settings()
    if not settings.database_url:
        raise fail("DATABASE_URL is not set: twintrack migrate needs a database to migrate")
    from twintrack.bootstrap import migrate

    asyncio.run(migrate(settings.database_url))
    typer.echo("database is at the latest schema")


@app.command()
def api() -> None:
    """Run the HTTP API (API_HOST:API_PORT)."""
    settings = load_cli_settings()
    from twintrack.entrypoints.processes import run_api

    _run_service(lambda: run_api(settings), settings.event_loop)


@app.command()
def worker(
    tracks: Annotated[
        str | None, typer.Option(help="Comma-separated tracks to serve (default WORKER_TRACKS).")
    ] = None,
) -> None:
    """Run a worker (with the recovery sweeper) until SIGINT/SIGTERM."""
    if tracks is not None:
        import os

        os.environ["WORKER_TRACKS"] = tracks
    settings = load_cli_settings()
    from twintrack.entrypoints.processes import run_worker

    _run_service(lambda: run_worker(settings), settings.event_loop)


@app.command()
def dev(
    port: Annotated[int | None, typer.Option(help="API port (default API_PORT).")] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show every library's logs (Alembic, DBOS...).")
    ] = False,
) -> None:
    """Everything on one machine: embedded servers, migrations, API and a worker."""
    from twintrack.config import ConfigError, load_settings
    from twintrack.entrypoints.dev import run_dev

    try:
        load_settings()  # fail fast, with the message, before starting any server
    except ConfigError as exc:
        raise fail(str(exc)) from None
    run_dev(port, verbose=verbose)


app.command()(compare)
app.add_typer(rollout_app, name="rollout")
app.add_typer(executions_app, name="executions")

keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    owner: Annotated[str, typer.Option(help="The owner the key acts as.", min=1)],
    admin: Annotated[
        bool,
        typer.Option("--admin", help="An admin key: may also choose the track on create."),
    ] = False,
) -> None:
    """Create an API key for OWNER and print it, alone, on stdout (shown only once)."""
    settings = load_cli_settings()
    if not settings.database_url:
        raise fail("DATABASE_URL is not set")
    if not owner.strip():
        raise fail("--owner must not be empty")
    from twintrack.entrypoints.dev import _create_key_for

    typer.echo(asyncio.run(_create_key_for(settings.database_url, owner.strip(), admin=admin)))


def _run_service(start: Any, event_loop: Any) -> None:
    from twintrack.config import ConfigError
    from twintrack.entrypoints.loop import run

    try:
        run(start(), event_loop)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def main() -> None:  # pragma: no cover - console entry
    app()
