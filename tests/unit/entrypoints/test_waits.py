"""The long-poll watcher alone: one query per tick for every waiter, outages ridden out."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from twintrack.entrypoints.api.waits import EndWatch


class Rows:
    """`finished_among` over a set the test controls; records each query's ids."""

    def __init__(self) -> None:
        self.finished: set[str] = set()
        self.queries: list[set[str]] = []
        self.down = False
        self.asked = asyncio.Event()

    async def queried(self, times: int = 1) -> None:
        """Return after `times` more queries (bounded: a stuck watch fails the test)."""
        for _ in range(times):
            self.asked.clear()
            await asyncio.wait_for(self.asked.wait(), 5)

    async def finished_among(self, ids: Collection[str]) -> set[str]:
        self.queries.append(set(ids))
        self.asked.set()
        if self.down:
            raise OSError("connection refused")
        return self.finished & set(ids)


async def test_every_waiter_wakes_on_one_query_and_the_loop_then_stops() -> None:
    rows = Rows()
    watch = EndWatch(rows.finished_among, interval_s=0.001)
    waiters = [asyncio.create_task(watch.wait(i, 10)) for i in ("ex_a", "ex_a", "ex_b")]
    await rows.queried()  # the loop is polling for all three
    assert rows.queries[0] == {"ex_a", "ex_b"}
    rows.finished = {"ex_a", "ex_b"}
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert watch.waiting == 0
    task = watch._loop_task
    assert task is not None
    await task  # nobody waits: the loop ends by itself


async def test_a_wait_times_out_and_an_outage_does_not_end_the_watch() -> None:
    rows = Rows()
    rows.down = True
    watch = EndWatch(rows.finished_among, interval_s=0.001)
    assert await watch.wait("ex_a", 0.05) is False
    assert watch.waiting == 0
    waiting = asyncio.create_task(watch.wait("ex_b", 10))
    await rows.queried(3)  # failing queries, and the watch still going
    rows.down = False
    rows.finished = {"ex_b"}
    assert await waiting is True
