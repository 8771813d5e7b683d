"""The one sweeper loop: lead, sweep, sleep, for every sweep a cluster runs once at a time.

Every worker process runs the loop; only the one holding the lead (adapters/postgres/leader.py)
sweeps, the others wait to take over. A sweep that raises is logged and the next one still
runs, in this round and the next: a loop that died would leave its recoveries undone until the
process restarts. Leaving the loop (the task is cancelled) releases the lead, so another process
takes over at once instead of when this one's connection ends. `on_lost` is told when this
process stops leading (say, to withdraw metrics only the leader keeps fresh).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from twintrack.core.recovery_ports import Leader

log = structlog.get_logger()


@dataclass(frozen=True)
class Sweep:
    name: str
    run: Callable[[], Awaitable[object]]


class Sweeper:
    def __init__(
        self,
        *,
        leader: Leader,
        interval_s: float,
        sweeps: Sequence[Sweep],
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.leader = leader
        self.interval_s = interval_s
        self.sweeps = list(sweeps)
        self.on_lost = on_lost
        self._leading = False

    def _lost(self) -> None:
        was, self._leading = self._leading, False
        if was and self.on_lost is not None:
            self.on_lost()

    @property
    def name(self) -> str:
        return self.leader.name

    async def sweep_once(self) -> bool:
        """One round if this process leads: each sweep in order, one's failure not stopping
        the next. Whether it led."""
        try:
            leading = await self.leader.lead()
        except Exception:
            log.exception("leader check failed", role=self.leader.name)
            leading = False
        if not leading:
            self._lost()
            return False
        self._leading = True
        for sweep in self.sweeps:
            try:
                await sweep.run()
            except Exception:
                log.exception("sweep failed", role=self.leader.name, sweep=sweep.name)
        return True

    async def run(self) -> None:
        """Sweep forever while leading; cancel the task to stop."""
        try:
            while True:
                await self.sweep_once()
                await asyncio.sleep(self.interval_s)
        finally:
            self._lost()
            await self.leader.release()
