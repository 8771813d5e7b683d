"""Services the engine hands to nodes, and in-process stand-ins for runs without a database."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from twintrack.nodes.base import ChildSpawner, Counters


class InMemoryCounters:
    """Counters for `twintrack run` without a database and for engine unit tests."""

    def __init__(self) -> None:
        self.values: Counter[str] = Counter()
        self._lock = asyncio.Lock()

    async def increment(self, name: str) -> int:
        async with self._lock:
            self.values[name] += 1
            return self.values[name]


@dataclass
class EngineServices:
    counters: Counters = field(default_factory=InMemoryCounters)
    children: ChildSpawner | None = None
