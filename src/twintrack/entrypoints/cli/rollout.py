"""`twintrack rollout ...`: the live rollout (status, set), the guard, moving unstarted work, the
shadow mismatch ledger (`mismatches`) and the scorecard (`report`).

`status` only reads the database; `set` changes the live rollout for every API process (within
ROLLOUT_REFRESH_S), recorded in the history under `--by` (default: the CLI user) with
`--reason`; `reroute` is a dry run unless `--yes`, so an operator always sees what would move
before anything does (and a copied command line cannot move by accident).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from twintrack.entrypoints.cli.bulk import FILTER_HELP, format_bulk, parse_filter
from twintrack.entrypoints.cli.support import EXIT_FAILED, fail, load_cli_settings

if TYPE_CHECKING:  # the factory pulls in both tracks: import it only when a command runs
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from twintrack.bootstrap import Container
    from twintrack.config import Settings
    from twintrack.core.bulk import BulkResult
    from twintrack.core.guard import GuardVerdict
    from twintrack.core.live_rollout import RolloutState
    from twintrack.core.rollout import RerouteReport, RolloutOverview, RolloutStatus
    from twintrack.core.scorecard import Scorecard
    from twintrack.core.shadow import Mismatch

rollout_app = typer.Typer(
    help="Staged rollout and rollback: the live rollout, the guard, per-track drain status, "
    "rerouting unstarted executions.",
    no_args_is_help=True,
)
guard_app = typer.Typer(help="The rollout guard's verdicts.", no_args_is_help=True)
rollout_app.add_typer(guard_app, name="guard")

_SHOWN_IDS = 20


class TrackChoice(StrEnum):
    """`Track`'s values, spelled here so that `--help` need not import pydantic for the enum."""

    KAFKA = "kafka"
    DBOS = "dbos"


_HINTS = {"its events are in a DBOS stream": "drop --hold-dbos-streams to move them too"}
T = TypeVar("T")


def _with_sessions(
    settings: Settings, body: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]
) -> T:
    """Run `body` on database sessions alone: reading status or planning a reroute needs no
    track, so it loads neither DBOS nor aiokafka (each command stays a fraction of a second)."""
    if not settings.database_url:
        raise fail("DATABASE_URL is not set")
    from twintrack.adapters.postgres.db import create_engine, create_session_factory

    engine = create_engine(settings.database_url)

    async def run() -> T:
        try:
            return await body(create_session_factory(engine))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _with_container(settings: Settings, body: Callable[[Container], Awaitable[T]]) -> T:
    """Run `body` on a started container built by the ServiceFactory (both tracks connected)."""
    from twintrack.config import ConfigError

    try:
        from twintrack.bootstrap import ServiceFactory

        container = ServiceFactory(settings).build()
    except ConfigError as exc:
        raise fail(str(exc)) from None

    async def run() -> T:
        try:
            try:
                await container.start()
            except Exception as exc:
                raise fail(f"cannot reach the tracks: {exc!r}", EXIT_FAILED) from exc
            return await body(container)
        finally:
            await container.close()

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


def format_status(status: RolloutStatus, phases: dict[Any, Any] | None = None) -> str:
    """A fixed-width table: one row per track (with its phase when the live state is known)."""
    from twintrack.domain.execution import ExecutionStatus

    statuses = [s for s in ExecutionStatus if status.includes_finished or not s.is_terminal]
    header = ["TRACK", *(s.value.upper() for s in statuses), "OLDEST UNFINISHED", "DRAINED"]
    if phases:
        header.append("PHASE")
    rows = [header]
    for track, t in status.tracks.items():
        counts = [str(t.counts.get(s, 0)) for s in statuses]
        drained = "yes" if t.drained else "no"
        row = [track.value, *counts, format_age(t.oldest_unfinished_age_s), drained]
        if phases:
            row.append(str(phases[track]))
        rows.append(row)
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
    history: Annotated[int, typer.Option(min=0, help="How many history entries to show.")] = 10,
) -> None:
    """The live rollout, its history, and per track: executions by status, the oldest
    unfinished one's age, drained or not, and its phase."""
    settings = load_cli_settings()

    async def body(sessions: async_sessionmaker[AsyncSession]) -> RolloutOverview:
        from twintrack.adapters.postgres.recovery import PostgresRerouteStore
        from twintrack.adapters.postgres.rollout import PostgresRolloutStore
        from twintrack.core.rollout import rollout_overview

        return await rollout_overview(
            PostgresRolloutStore(sessions),
            PostgresRerouteStore(sessions),
            history=history,
            include_finished=not unfinished_only,
        )

    result = _with_sessions(settings, body)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    typer.echo(format_status(result.tracks, result.phases))
    typer.echo("")
    if result.state is None:
        typer.echo(
            "live rollout: not seeded yet (the first API process seeds it from the environment)"
        )
        return
    typer.echo(f"live rollout: {format_state(result.state)}")
    if settings.rollout_source == "environment":
        typer.echo("note: ROLLOUT_SOURCE=environment here; processes set so ignore this state")
    typer.echo("history (newest first):")
    for state in result.history:
        typer.echo(f"  {format_history(state)}")


def format_state(state: RolloutState) -> str:
    s = state.switches
    cohort = "flag" if s.rollout_percent is None else f"{s.rollout_percent}% of owners"
    return (
        f"v{state.version}: DBOS gets {s.dbos_share}% ({cohort}; ENABLE_DBOS={s.enable_dbos}), "
        f"events backend {s.events_backend}, shadow runs {s.shadow_percent}%"
        + ("; Kafka fallback on" if s.fallback_to_kafka else "")
    )


def format_history(state: RolloutState) -> str:
    when = state.changed_at.strftime("%Y-%m-%d %H:%M:%S")
    return f"{when}  {format_state(state)}  by {state.changed_by}: {state.reason}"


@rollout_app.command("set")
def set_command(
    reason: Annotated[str, typer.Option(help="Why (kept in the rollout history).")],
    percent: Annotated[
        int | None, typer.Option(min=0, max=100, help="The DBOS cohort: 0-100 % of owners.")
    ] = None,
    clear_percent: Annotated[
        bool, typer.Option("--clear-percent", help="No cohort: the flag decides again.")
    ] = False,
    enable_dbos: Annotated[
        bool | None,
        typer.Option("--enable-dbos/--disable-dbos", help="The flag (used without a cohort)."),
    ] = None,
    events_backend: Annotated[
        TrackChoice | None,
        typer.Option("--events-backend", case_sensitive=False, help="For new DBOS executions."),
    ] = None,
    shadow_percent: Annotated[
        int | None,
        typer.Option(
            "--shadow-percent",
            min=0,
            max=100,
            help="Share of completed executions re-run on the other track (shadow runs).",
        ),
    ] = None,
    fallback_to_kafka: Annotated[
        bool | None,
        typer.Option(
            "--fallback-to-kafka/--no-fallback-to-kafka",
            help="Create an execution routed to DBOS on Kafka when DBOS cannot admit it "
            "(else: refused with a 503).",
        ),
    ] = None,
    by: Annotated[str | None, typer.Option(help="Who changes it (default: the CLI user).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Change the live rollout: every API process applies it within ROLLOUT_REFRESH_S."""
    import getpass

    if percent is not None and clear_percent:
        raise fail("give --percent or --clear-percent, not both")
    settings = load_cli_settings()
    actor = by or getpass.getuser()

    async def body(sessions: async_sessionmaker[AsyncSession]) -> RolloutState:
        from twintrack.adapters.postgres.rollout import PostgresRolloutStore
        from twintrack.bootstrap import initial_switches
        from twintrack.core.live_rollout import ENVIRONMENT, RolloutChange, set_rollout
        from twintrack.domain.execution import EventsBackend

        store = PostgresRolloutStore(sessions)
        await store.seed(
            initial_switches(settings),
            changed_by=ENVIRONMENT,
            reason="initial state from the environment",
        )
        fields: dict[str, Any] = {}
        if percent is not None or clear_percent:
            fields["rollout_percent"] = percent
        change = RolloutChange(
            enable_dbos=enable_dbos,
            events_backend=EventsBackend(events_backend.value) if events_backend else None,
            shadow_percent=shadow_percent,
            fallback_to_kafka=fallback_to_kafka,
            **fields,
        )
        return await set_rollout(store, change, changed_by=actor, reason=reason)

    from twintrack.core.live_rollout import InvalidRolloutChange

    try:
        state = _with_sessions(settings, body)
    except InvalidRolloutChange as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps(state.to_json(), indent=2) if as_json else format_state(state))


@guard_app.command("status")
def guard_status(
    limit: Annotated[int, typer.Option(min=1, help="How many verdicts to show.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """The guard's latest verdicts, newest first, with their figures."""
    settings = load_cli_settings()

    async def body(sessions: async_sessionmaker[AsyncSession]) -> list[GuardVerdict]:
        from twintrack.adapters.postgres.rollout import PostgresGuardStore

        return await PostgresGuardStore(sessions).recent(limit)

    verdicts = _with_sessions(settings, body)
    if as_json:
        typer.echo(
            json.dumps(
                {"enabled": settings.guard_enabled, "verdicts": [v.to_json() for v in verdicts]},
                indent=2,
            )
        )
        return
    typer.echo(f"guard: {'enabled' if settings.guard_enabled else 'disabled'} (GUARD_ENABLED)")
    if not verdicts:
        typer.echo("no verdicts yet")
    for v in verdicts:
        when = v.decided_at.strftime("%Y-%m-%d %H:%M:%S") if v.decided_at else "-"
        dbos, kafka = v.figures.get("dbos", {}), v.figures.get("kafka", {})
        back = "  ROLLED BACK" if v.rolled_back else ""
        typer.echo(
            f"{when}  {v.verdict.value.upper():<12} {v.reason}{back}\n"
            f"    dbos: {dbos}\n    kafka: {kafka}  (failures in a row: {v.consecutive_failures})"
        )


# -- shadow runs and the scorecard -----------------------------------------------------------


@rollout_app.command("mismatches")
def mismatches_command(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many to show.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """The shadow mismatch ledger, newest first: shadow runs that differed from the original."""
    settings = load_cli_settings()

    async def body(sessions: async_sessionmaker[AsyncSession]) -> list[Mismatch]:
        from twintrack.adapters.postgres.shadow import PostgresShadowStore

        return await PostgresShadowStore(sessions).mismatches(limit)

    found = _with_sessions(settings, body)
    if as_json:
        typer.echo(json.dumps({"mismatches": [m.to_json() for m in found]}, indent=2))
        return
    if not found:
        typer.echo("no mismatches recorded")
    for m in found:
        when = m.recorded_at.strftime("%Y-%m-%d %H:%M:%S") if m.recorded_at else "-"
        typer.echo(
            f"{when}  {m.original_id} ({m.original_track}) vs shadow {m.shadow_id} "
            f"({m.shadow_track})  flow {m.flow_id} v{m.flow_version}"
        )
        for node_id, why in sorted(m.replayed.items()):
            typer.echo(f"    not run in the shadow: {node_id}: {why}")
        typer.echo("    " + m.diff.replace("\n", "\n    "))


def _figure(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if percent else f"{value:.3f}"


def format_scorecard(card: Scorecard) -> str:
    header = (
        f"{'TRACK':<6} {'COHORT':<9} {'EXECS':>6} {'ERRORS':>7} {'CONSIST':>8} {'SHADOWS':>7} "
        f"{'P50 S':>8} {'P99 S':>8} {'QUEUE P50':>9} {'QUEUE P99':>9} {'RECOV':>5}"
    )
    rows = [f"window: {format_age(card.window_s)}", header]
    for r in card.rows:
        rows.append(
            f"{r.track.value:<6} {r.cohort:<9} {r.executions:>6} "
            f"{_figure(r.error_rate, True):>7} {_figure(r.consistency_rate, True):>8} "
            f"{r.shadow_runs:>7} {_figure(r.p50_s):>8} {_figure(r.p99_s):>8} "
            f"{_figure(r.queue_p50_s):>9} {_figure(r.queue_p99_s):>9} {r.recoveries:>5}"
        )
    return "\n".join(rows)


@rollout_app.command("report")
def report_command(
    window: Annotated[str, typer.Option(help="How far back: 90s, 30m, 1h, 2d.")] = "1h",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """The scorecard per track and cohort: executions, error and consistency rates, p50/p99
    create->completed and queue wait, recoveries."""
    from twintrack.core.scorecard import parse_window

    try:
        window_s = parse_window(window)
    except ValueError as exc:
        raise fail(str(exc)) from None
    settings = load_cli_settings()

    async def body(sessions: async_sessionmaker[AsyncSession]) -> Scorecard:
        from twintrack.adapters.postgres.scorecard import PostgresScorecardStore
        from twintrack.core.scorecard import scorecard

        return await scorecard(PostgresScorecardStore(sessions), window_s)

    card = _with_sessions(settings, body)
    typer.echo(json.dumps(card.to_json(), indent=2) if as_json else format_scorecard(card))


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
        TrackChoice,
        typer.Option("--to", case_sensitive=False, help="The track to move executions to."),
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
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help=f"Move only these (a bulk operation with a result per id). {FILTER_HELP}",
        ),
    ] = None,
    operation_id: Annotated[
        str | None,
        typer.Option(
            help="With --filter: run (or re-run) this operation; nothing moves twice under it."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Move unstarted executions (created, queued) to another track; a dry run unless --yes.

    Each moves atomically and at most once, and runs exactly once, on the new track. With
    --filter it is a bulk operation (per-id results, safe to re-run with --operation-id)."""
    from twintrack.domain.execution import Track

    settings = load_cli_settings()
    target = Track(to.value)
    if filters or operation_id is not None:
        if limit is not None or owner is not None:
            raise fail("with --filter, select with it (owner=...), and BULK_MAX_IDS caps it")
        _bulk_reroute(
            settings, target, filters or [], operation_id, include_dbos_streams, yes, as_json
        )
        return

    async def plan(sessions: async_sessionmaker[AsyncSession]) -> RerouteReport:
        from twintrack.adapters.postgres.recovery import PostgresRerouteStore
        from twintrack.core.rollout import plan_reroute

        return await plan_reroute(
            PostgresRerouteStore(sessions),
            to=target,
            limit=limit,
            owner_id=owner,
            include_dbos_streams=include_dbos_streams,
        )

    async def move(container: Container) -> RerouteReport:
        from twintrack.core.rollout import reroute

        return await reroute(
            container.service,
            container.reroutes,
            container.audit,
            to=target,
            limit=limit,
            owner_id=owner,
            include_dbos_streams=include_dbos_streams,
        )

    report = _with_container(settings, move) if yes else _with_sessions(settings, plan)
    typer.echo(json.dumps(report.to_json(), indent=2) if as_json else format_report(report))
    if report.failed:
        raise typer.Exit(EXIT_FAILED)


def _bulk_reroute(
    settings: Settings,
    target: Any,
    filters: list[str],
    operation_id: str | None,
    include_dbos_streams: bool,
    yes: bool,
    as_json: bool = False,
) -> None:
    import getpass

    from twintrack.core.bulk import InvalidBulkRequest, OperationIdReused

    where = parse_filter(filters)

    async def preview(sessions: async_sessionmaker[AsyncSession]) -> BulkResult:
        from twintrack.adapters.postgres.bulk import PostgresBulkStore
        from twintrack.core import bulk

        chosen = bulk.reroute_filter(where, target, include_dbos_streams)
        request = {
            "filter": chosen.to_json(),
            "to": target.value,
            "include_dbos_streams": include_dbos_streams,
        }
        limits = bulk.BulkLimits(max_ids=settings.bulk_max_ids, page_size=settings.bulk_page_size)
        return await bulk.preview(
            PostgresBulkStore(sessions), bulk.BulkAction.REROUTE, chosen, request, limits
        )

    async def act(container: Container) -> BulkResult:
        return await container.bulk.reroute(
            where,
            to=target,
            requested_by=getpass.getuser(),
            include_dbos_streams=include_dbos_streams,
            dry_run=False,
            operation_id=operation_id,
        )

    try:
        result = _with_container(settings, act) if yes else _with_sessions(settings, preview)
    except (InvalidBulkRequest, OperationIdReused) as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps(result.to_json(), indent=2) if as_json else format_bulk(result))
    if any(r.outcome.value == "failed" for r in result.results.values()):
        raise typer.Exit(EXIT_FAILED)
