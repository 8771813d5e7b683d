"""`twintrack executions ...`: operator actions on many executions at once.

`stop --filter ...` stops (with their trees) every unfinished execution the filter selects, any
owner's — a dry run unless `--yes`, then one operation at most once per execution (see
entrypoints/cli/bulk.py).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from twintrack.entrypoints.cli.bulk import FILTER_HELP, format_bulk, parse_filter
from twintrack.entrypoints.cli.support import EXIT_FAILED, fail, load_cli_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from twintrack.bootstrap import Container
    from twintrack.core.bulk import BulkResult

executions_app = typer.Typer(help="Act on many executions at once.", no_args_is_help=True)


@executions_app.callback()
def executions() -> None:
    """Act on many executions at once (a group even with one verb, so `stop` stays a verb)."""


@executions_app.command("stop")
def stop_command(
    filters: Annotated[list[str], typer.Option("--filter", help=FILTER_HELP)],
    reason: Annotated[str, typer.Option(help="Why (each execution's stop reason).")] = (
        "stopped by a bulk action"
    ),
    operation_id: Annotated[
        str | None,
        typer.Option(help="Run (or re-run) this operation: nothing is stopped twice under it."),
    ] = None,
    by: Annotated[str | None, typer.Option(help="Who (default: the CLI user).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do it (without: show what would stop).")] = (
        False
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Stop every unfinished execution the filter selects (each with its tree); a dry run
    unless --yes. Each is stopped at most once per operation id."""
    import getpass

    from twintrack.entrypoints.cli.rollout import _with_container, _with_sessions

    if not filters:
        raise fail("give at least one --filter (e.g. --filter track=dbos)")
    where = parse_filter(filters)
    settings = load_cli_settings()
    actor = by or getpass.getuser()

    async def preview(sessions: async_sessionmaker[AsyncSession]) -> BulkResult:
        from twintrack.adapters.postgres.bulk import PostgresBulkStore
        from twintrack.core import bulk

        chosen = bulk.stop_filter(where)
        request = {"filter": chosen.to_json(), "reason": reason}
        limits = bulk.BulkLimits(max_ids=settings.bulk_max_ids, page_size=settings.bulk_page_size)
        return await bulk.preview(
            PostgresBulkStore(sessions), bulk.BulkAction.STOP, chosen, request, limits
        )

    async def act(container: Container) -> BulkResult:
        return await container.bulk.stop(
            where, reason=reason, requested_by=actor, dry_run=False, operation_id=operation_id
        )

    from twintrack.core.bulk import InvalidBulkRequest, OperationIdReused

    try:
        result = _with_container(settings, act) if yes else _with_sessions(settings, preview)
    except (InvalidBulkRequest, OperationIdReused) as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps(result.to_json(), indent=2) if as_json else format_bulk(result))
    if any(r.outcome.value == "failed" for r in result.results.values()):
        raise typer.Exit(EXIT_FAILED)
