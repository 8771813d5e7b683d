"""EVENT_LOOP picks the loop the service processes run on."""

from __future__ import annotations

import asyncio

import uvloop

from twintrack.config import Settings
from twintrack.entrypoints.loop import run


async def _loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_the_standard_loop_by_default_and_uvloop_on_request() -> None:
    assert Settings().event_loop == "asyncio"
    assert not issubclass(run(_loop_type(), "asyncio"), uvloop.Loop)
    assert issubclass(run(_loop_type(), "uvloop"), uvloop.Loop)
    assert Settings(event_loop="uvloop").event_loop == "uvloop"
