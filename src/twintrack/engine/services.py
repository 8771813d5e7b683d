"""Services the engine hands to nodes, and in-process stand-ins for runs without a database."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from twintrack.engine.shadow import ShadowReplay
from twintrack.nodes.base import ChildSpawner, Counters


class InMemoryCounters:
    """Counters for `twintrack run` without a database and for engine unit tests."""

    def __init__(self) -> None:
        self.values: Counter[str] = Counter()
        self._done: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def increment(self, name: str, *, key: str | None = None) -> int:
        async with self._lock:
            if key is not None and key in self._done:
                return self._done[key]
            self.values[name] += 1
            if key is not None:
                self._done[key] = self.values[name]
            return self.values[name]


@dataclass
class EngineServices:
    counters: Counters = field(default_factory=InMemoryCounters)
    children: ChildSpawner | None = None
    #: which run of the execution this is (1 unless recovery re-runs it)
    attempt: int = 1
    #: set for a shadow run: side-effecting nodes are replayed from the original, not run
    shadow: ShadowReplay | None = None
