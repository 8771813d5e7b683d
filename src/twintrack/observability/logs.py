"""structlog set-up shared by every process: console lines for people, JSON for machines."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog


class _Stderr:
    """sys.stderr looked up at each write: a swapped-out (and closed) stream, as test runners
    leave behind, never breaks logging later on."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "INFO", fmt: Literal["console", "json"] = "console") -> None:
    """Route structlog and stdlib logging to stderr (stdout stays free for command output)."""
    logging.basicConfig(stream=_Stderr(), level=level, format="%(message)s", force=True)
    structlog.configure(
        processors=processors(fmt),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


def processors(fmt: Literal["console", "json"] = "console") -> list[structlog.typing.Processor]:
    """The processor chain. Tracebacks are plain text: rich's (with every frame's locals) take
    seconds to render, which during an outage, when every retry logs one, stalls the loop."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        renderer,
    ]
