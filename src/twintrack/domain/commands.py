"""Commands a user sends to an execution."""

from __future__ import annotations

from enum import StrEnum


class Command(StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    STEP = "step"
    STOP = "stop"
