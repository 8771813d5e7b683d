"""The DBOS worker's event loop is the one running it, not the policy's "current" one.

Under pytest-xdist a file order put a sync test calling `asyncio.run` (a CLI test) after the
session loop had started and before the comparison suite: `asyncio.run` leaves the thread with no
current loop, so a worker that asked the policy failed to deploy, in every mode ("root stream:
expected exactly one terminal event, found 0"). This pins the fix independently of file order.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from twintrack.adapters.dbos.runtime import DbosRuntime
from twintrack.adapters.dbos.worker import DbosWorker
from twintrack.core.run_host import RunHost


async def _build() -> bool:
    worker = DbosWorker(runtime=cast(DbosRuntime, None), host=cast(RunHost, None))
    return worker.loop is asyncio.get_running_loop()


def _on_a_loop_that_is_not_current() -> bool:
    """A loop run in a fresh thread without `set_event_loop`: the policy has no current loop
    there, as after an `asyncio.run`, and nothing global is touched."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_build())
    finally:
        loop.close()


def test_the_dbos_worker_takes_the_running_loop_when_the_thread_has_no_current_one() -> None:
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(_on_a_loop_that_is_not_current).result(timeout=10)
