"""The service processes' event loop: the standard library's, or uvloop with EVENT_LOOP=uvloop.

uvloop runs the same asyncio code on libuv; under the throughput load it took less CPU per
HTTP request, per asyncpg round trip and per Kafka send than the standard loop. DBOS keeps its
own background loop in a thread of its own; only ours changes. It is opt-in: one full bench run
with it hung (docs/perf/README.md), which was not reproduced or explained yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

EventLoopKind = Literal["uvloop", "asyncio"]


def loop_factory(kind: EventLoopKind) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], kind: EventLoopKind) -> T:
    """`asyncio.run(main)` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)
