"""What every CLI verb shares: exit codes, the one way to fail, settings loaded once.

Kept free of heavy imports (pydantic-settings, structlog, SQLAlchemy, DBOS, aiokafka): operators
and tests run many short commands, and `--help` must not pay for libraries it does not use. Each
verb imports what it needs inside its body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from twintrack.config import Settings

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def fail(message: str, code: int = EXIT_INVALID) -> typer.Exit:
    """Print `error: message` on stderr; raise the returned Exit (exit 2 by default)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def configure_from(settings: Settings) -> None:
    from twintrack.observability.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)


def load_cli_settings() -> Settings:
    """Settings from the environment, logging configured from them; invalid ones exit 2."""
    from twintrack.config import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise fail(str(exc)) from None
    configure_from(settings)
    return settings
