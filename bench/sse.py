"""A timed Server-Sent Events subscription: each event with the moment the client got it.

Used like a person would: open the stream first, then start or command the execution, then
read. `Received.at` and the envelope's `timestamp` (set by the engine when it created the
event) are both wall-clock times of this machine, so their difference is the delivery delay.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from tests.e2e.stack import TERMINAL, Api


@dataclass(frozen=True)
class Received:
    at: float  # time.time() when the `data:` line reached the client
    event: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.event["type"])

    @property
    def stamped(self) -> float:
        """The envelope's timestamp (engine time) as a time.time() value."""
        return dt.datetime.fromisoformat(self.event["timestamp"]).timestamp()

    @property
    def delay_ms(self) -> float:
        return (self.at - self.stamped) * 1000


class Stream:
    """An open SSE response; `next()` returns the next event as it arrives."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()
        self.seen: list[Received] = []

    async def next(self) -> Received:
        async for line in self._lines:
            if line.startswith("data:"):
                received = Received(time.time(), json.loads(line[5:]))
                self.seen.append(received)
                return received
        raise EOFError("the event stream ended")

    async def until(self, match: Callable[[Received], bool]) -> Received:
        while True:
            received = await self.next()
            if match(received):
                return received

    async def until_type(self, *types: str) -> Received:
        return await self.until(lambda r: r.type in types)

    async def until_terminal(self) -> Received:
        return await self.until(lambda r: r.type in TERMINAL)


@contextlib.asynccontextmanager
async def subscribe(api: Api, execution_id: str, from_index: int = 0) -> AsyncIterator[Stream]:
    """The execution's event stream, open (response headers received) when this yields."""
    async with api.client.stream(
        "GET",
        f"/v1/executions/{execution_id}/events",
        params={"from_index": from_index},
        headers=api.auth,
        timeout=httpx.Timeout(60.0),
    ) as response:
        if response.status_code != 200:
            raise RuntimeError(f"events of {execution_id}: HTTP {response.status_code}")
        yield Stream(response)
