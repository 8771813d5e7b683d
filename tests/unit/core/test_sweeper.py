"""The one sweeper loop: sweeps only while leading, survives a sweep (or the leader check)
raising, and gives the lead up when it stops."""

from __future__ import annotations

import asyncio
import contextlib

from twintrack.core.sweeper import Sweep, Sweeper


class FakeLeader:
    name = "test sweeper"

    def __init__(self, leading: bool = True) -> None:
        self.leading = leading
        self.fail = False
        self.released = 0

    async def lead(self) -> bool:
        if self.fail:
            raise ConnectionError("database gone")
        return self.leading

    async def release(self) -> None:
        self.released += 1


class Counting:
    def __init__(self, raises: bool = False) -> None:
        self.calls = 0
        self.raises = raises
        self.reached = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls >= 3:
            self.reached.set()
        if self.raises:
            raise RuntimeError("this sweep always fails")


async def test_a_failing_sweep_neither_stops_the_next_nor_the_loop() -> None:
    leader, broken, healthy = FakeLeader(), Counting(raises=True), Counting()
    loop = Sweeper(
        leader=leader,
        interval_s=0.001,
        sweeps=[Sweep("broken", broken), Sweep("healthy", healthy)],
    )
    task = asyncio.create_task(loop.run())
    await asyncio.wait_for(healthy.reached.wait(), 5)
    assert broken.calls >= healthy.calls - 1 >= 2  # every round ran both
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert leader.released == 1  # another process may lead at once


async def test_only_the_leader_sweeps() -> None:
    leader, sweep = FakeLeader(leading=False), Counting()
    loop = Sweeper(leader=leader, interval_s=0.001, sweeps=[Sweep("s", sweep)])
    assert not await loop.sweep_once()
    assert sweep.calls == 0
    leader.leading = True
    assert await loop.sweep_once()
    assert sweep.calls == 1


async def test_a_leader_check_that_raises_counts_as_not_leading() -> None:
    leader, sweep = FakeLeader(), Counting()
    leader.fail = True
    loop = Sweeper(leader=leader, interval_s=0.001, sweeps=[Sweep("s", sweep)])
    task = asyncio.create_task(loop.run())
    await asyncio.sleep(0.02)
    assert sweep.calls == 0
    assert not task.done()  # still looping
    leader.fail = False
    await asyncio.wait_for(sweep.reached.wait(), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert leader.released == 1


async def test_losing_the_lead_is_told_once() -> None:
    leader, lost = FakeLeader(), []
    loop = Sweeper(leader=leader, interval_s=0.001, sweeps=[], on_lost=lambda: lost.append(1))
    await loop.sweep_once()
    leader.leading = False
    await loop.sweep_once()
    await loop.sweep_once()
    assert lost == [1]  # once per lead lost, not per round
