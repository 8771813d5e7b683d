"""Long-polls (`GET /v1/executions/{id}?wait=N`): one watcher per API process for all of them.

Each waiting request parks on a future; one loop asks the database every `interval_s` which of
the executions waited on have ended (one indexed query for all of them, through the pool, so no
connection is held while anyone waits) and wakes their requests. A thousand waiting clients cost
the same as one, and an execution's ending is seen within one interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

from twintrack.entrypoints.api.errors import report

POLL_INTERVAL_S = 0.025

FinishedAmong = Callable[[Collection[str]], Awaitable[set[str]]]


class EndWatch:
    """Wait for executions to end, every waiter of the process on one polling loop."""

    def __init__(self, finished_among: FinishedAmong, interval_s: float = POLL_INTERVAL_S) -> None:
        self._finished_among = finished_among
        self._interval_s = interval_s
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def waiting(self) -> int:
        """Executions waited on now (for tests and metrics)."""
        return len(self._waiters)

    async def wait(self, execution_id: str, timeout_s: float) -> bool:
        """True as soon as the execution has ended; False after `timeout_s` without an ending."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(execution_id, set()).add(future)
        self._ensure_polling()
        try:
            done, _ = await asyncio.wait({future}, timeout=timeout_s)
            return future in done
        finally:
            waiters = self._waiters.get(execution_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[execution_id]

    def _ensure_polling(self) -> None:
        task = self._loop_task
        running = asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not running:
            self._loop_task = running.create_task(self._poll(), name="long-poll-watch")

    async def _poll(self) -> None:
        while self._waiters:
            await asyncio.sleep(self._interval_s)
            ids = list(self._waiters)
            if not ids:
                break
            try:
                finished = await self._finished_among(ids)
            except Exception as exc:
                # An outage: keep watching (said once, not every tick). Waiters that time out
                # meanwhile read the row once more, which answers 503 if it is still down.
                if not self._failing:
                    error = f"{type(exc).__name__}: {exc}"
                    report("warning", "long-poll watch failed; retrying", error=error)
                self._failing = True
                continue
            self._failing = False
            for execution_id in finished:
                for future in self._waiters.pop(execution_id, ()):
                    if not future.done():
                        future.set_result(None)
