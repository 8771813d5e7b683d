"""Shared start-up for CLI commands: settings loaded once, logging configured from them."""

from __future__ import annotations

from twintrack.config import Settings
from twintrack.logs import configure_logging


def configure_from(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)
