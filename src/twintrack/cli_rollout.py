"""`twintrack rollout ...`: watch the tracks drain, and move unstarted work between them.

`status` only reads the database; `reroute` is a dry run unless `--yes`, so an operator always
sees what would move before anything does (and a copied command line cannot move by accident).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from twintrack.cli_support import configure_from
from twintrack.config import ConfigError, Settings, load_settings
from twintrack.domain.execution import ExecutionStatus, Track

if TYPE_CHECKING:  # the factory pulls in both tracks: import it only when a command runs
    from twintrack.factory import Container
    from twintrack.rollout import RerouteReport, RolloutStatus

rollout_app = typer.Typer(
    help="Staged rollout and rollback: per-track drain status, rerouting unstarted executions.",
    no_args_is_help=True,
)

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
_SHOWN_IDS = 20
_HINTS = {"its events are in a DBOS stream": "drop --hold-dbos-streams to move them too"}
T = TypeVar("T")


def _fail(message: str, code: int = EXIT_INVALID) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    configure_from(settings)
    return settings


def _with_container(
    settings: Settings, body: Callable[[Container], Awaitable[T]], *, start: bool
) -> T:
    """Run `body` on a container built by the ServiceFactory; `start` connects the tracks
    (only a real reroute needs them: reading status or planning needs just the database)."""
    try:
        from twintrack.factory import ServiceFactory

        container = ServiceFactory(settings).build()
    except ConfigError as exc:
        raise _fail(str(exc)) from None

    async def run() -> T:
        try:
            if start:
                try:
                    await container.start()
                except Exception as exc:
                    raise _fail(f"cannot reach the tracks: {exc!r}", EXIT_FAILED) from exc
            return await body(container)
        finally:
            if start:
                await container.close()
            else:
                await container.db_engine.dispose()

    return asyncio.run(run())


# -- status ----------------------------------------------------------------------------------


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86_400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86_400}d {whole % 86_400 // 3600:02d}h"


def format_status(status: RolloutStatus) -> str:
    """A fixed-width table: one row per track."""
    statuses = [s for s in ExecutionStatus if status.includes_finished or not s.is_terminal]
    header = ["TRACK", *(s.value.upper() for s in statuses), "OLDEST UNFINISHED", "DRAINED"]
    rows = [header]
    for track, t in status.tracks.items():
        counts = [str(t.counts.get(s, 0)) for s in statuses]
        drained = "yes" if t.drained else "no"
        rows.append([track.value, *counts, format_age(t.oldest_unfinished_age_s), drained])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = range(1, len(statuses) + 1)
    lines = [
        "  ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


@rollout_app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    unfinished_only: Annotated[
        bool,
        typer.Option(
            "--unfinished-only", help="Skip counting finished executions (a full table scan)."
        ),
    ] = False,
) -> None:
    """Per track: executions by status, the oldest unfinished one's age, drained or not."""
    settings = _settings()

    async def body(container: Container) -> RolloutStatus:
        from twintrack.rollout import rollout_status

        return await rollout_status(container.sessions, include_finished=not unfinished_only)

    result = _with_container(settings, body, start=False)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        typer.echo(format_status(result))


# -- reroute ---------------------------------------------------------------------------------


def _by_status(report: RerouteReport) -> str:
    counts = Counter(m.status.value for m in report.moved)
    return ", ".join(f"{s}: {n}" for s, n in sorted(counts.items()))


def _reasons(items: list[Any]) -> str:
    counts = Counter(item.reason for item in items)
    return "; ".join(f"{reason} ({n})" for reason, n in counts.most_common())


def format_report(report: RerouteReport) -> str:
    route = f"from {report.source} to {report.to}"
    n = len(report.moved)
    lines = []
    if report.dry_run:
        lines.append(f"dry run: {n} execution(s) would move {route}" + _detail(report))
    else:
        lines.append(f"moved {n} execution(s) {route}" + _detail(report))
    for moved in report.moved[:_SHOWN_IDS]:
        lines.append(f"  {moved.execution_id}  {moved.status}  events: {moved.events_backend}")
    if n > _SHOWN_IDS:
        lines.append(f"  ... and {n - _SHOWN_IDS} more (--json lists them all)")
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)}: {_reasons(report.skipped)}")
    for failed in report.failed:
        lines.append(f"FAILED {failed.execution_id}: {failed.reason}")
    for reason, count in report.held_back.items():
        hint = f"; {_HINTS[reason]}" if reason in _HINTS else ""
        lines.append(f"held back {count}: {reason}{hint}")
    if report.dry_run and n:
        lines.append("Nothing was changed. Run again with --yes to move them.")
    return "\n".join(lines)


def _detail(report: RerouteReport) -> str:
    return f" ({_by_status(report)})" if report.moved else ""


@rollout_app.command("reroute")
def reroute_command(
    to: Annotated[
        Track, typer.Option("--to", case_sensitive=False, help="The track to move executions to.")
    ],
    limit: Annotated[
        int | None, typer.Option(min=1, help="Move at most N (the oldest first).")
    ] = None,
    owner: Annotated[str | None, typer.Option(help="Only this owner's executions.")] = None,
    include_dbos_streams: Annotated[
        bool,
        typer.Option(
            "--include-dbos-streams/--hold-dbos-streams",
            help="Also move executions whose events are in DBOS streams (they keep writing to "
            "that stream from the new track).",
        ),
    ] = True,
    yes: Annotated[
        bool, typer.Option("--yes", help="Do it (without: show what would move).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Move unstarted executions (created, queued) to another track; a dry run unless --yes.

    Each moves atomically and at most once, and runs exactly once, on the new track."""
    settings = _settings()

    async def body(container: Container) -> RerouteReport:
        from twintrack.rollout import plan_reroute, reroute

        if not yes:
            return await plan_reroute(
                container.sessions,
                to=to,
                limit=limit,
                owner_id=owner,
                include_dbos_streams=include_dbos_streams,
            )
        return await reroute(
            container.service,
            to=to,
            limit=limit,
            owner_id=owner,
            include_dbos_streams=include_dbos_streams,
        )

    report = _with_container(settings, body, start=yes)
    typer.echo(json.dumps(report.to_json(), indent=2) if as_json else format_report(report))
    if report.failed:
        raise typer.Exit(EXIT_FAILED)
