"""The live rollout: where new executions go, changed at run time without a restart.

A rollout used to be environment variables, so moving the DBOS cohort from 5 % to 25 % meant
restarting every API process. The state now lives in a store (Postgres in production) with a
history of every change (when, who, why); every API process keeps a copy that `route()` reads
without a round trip, refreshed on the store's change feed (LISTEN/NOTIFY) and, because a
notification can be lost while a listener reconnects, re-read every `refresh_s` anyway. The
environment gives the first state (seeded when the store is empty) and, with
`ROLLOUT_SOURCE=environment`, overrides the store in that process.

Cohorts keep their rule (domain/rollout.py): raising the percentage only adds owners. A state
is applied only when its version is newer than the one in force, so a slow re-read can never
undo a newer notification.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import structlog

from twintrack.core.service import RoutingPolicy
from twintrack.domain.execution import EventsBackend, Track
from twintrack.domain.rollout import TrackPhase, dbos_share, track_phases

log = structlog.get_logger()

#: who seeds the first state
ENVIRONMENT = "environment"


class InvalidRolloutChange(ValueError):
    """The change cannot be applied (a percentage out of range, no reason given, ...)."""


class RolloutSuperseded(Exception):
    """A change conditional on a version (`expected_version`) met a newer one: someone changed
    the rollout since the caller looked, and their state stands."""

    def __init__(self, expected: int, current: RolloutState) -> None:
        super().__init__(
            f"the rollout is at v{current.version} (by {current.changed_by}: {current.reason}), "
            f"not v{expected}"
        )
        self.expected = expected
        self.current = current


@dataclass(frozen=True)
class Switches:
    """What decides the track and events backend of a new root execution."""

    enable_dbos: bool
    rollout_percent: int | None
    events_backend: EventsBackend
    #: the share of completed root executions re-run on the other track (core/shadow.py)
    shadow_percent: int = 0
    #: an execution routed to DBOS whose DBOS admission fails goes to Kafka (else: refused)
    fallback_to_kafka: bool = False

    @property
    def dbos_share(self) -> int:
        return dbos_share(enable_dbos=self.enable_dbos, rollout_percent=self.rollout_percent)

    def phases(self, unfinished: dict[Track, int] | None = None) -> dict[Track, TrackPhase]:
        return track_phases(
            enable_dbos=self.enable_dbos,
            rollout_percent=self.rollout_percent,
            unfinished=unfinished,
        )


@dataclass(frozen=True)
class RolloutState:
    """One version of the rollout, as in force from `changed_at` on."""

    switches: Switches
    version: int
    changed_at: datetime
    changed_by: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        s = self.switches
        return {
            "version": self.version,
            "enable_dbos": s.enable_dbos,
            "rollout_percent": s.rollout_percent,
            "events_backend": s.events_backend.value,
            "fallback_to_kafka": s.fallback_to_kafka,
            "dbos_share": s.dbos_share,
            "shadow_percent": s.shadow_percent,
            "phases": {t.value: p.value for t, p in s.phases().items()},
            "changed_at": self.changed_at.isoformat(),
            "changed_by": self.changed_by,
            "reason": self.reason,
        }


_KEEP: Any = object()


@dataclass(frozen=True)
class RolloutChange:
    """Fields to change; the rest stay. `rollout_percent=None` clears the cohort (the flag
    decides again)."""

    enable_dbos: bool | None = None
    rollout_percent: int | None = _KEEP
    events_backend: EventsBackend | None = None
    shadow_percent: int | None = None
    fallback_to_kafka: bool | None = None

    def apply(self, switches: Switches) -> Switches:
        percent = (
            switches.rollout_percent if self.rollout_percent is _KEEP else self.rollout_percent
        )
        if percent is not None and not 0 <= percent <= 100:
            raise InvalidRolloutChange(f"rollout percent must be 0-100, got {percent}")
        if self.shadow_percent is not None and not 0 <= self.shadow_percent <= 100:
            raise InvalidRolloutChange(f"shadow percent must be 0-100, got {self.shadow_percent}")
        return replace(
            switches,
            enable_dbos=switches.enable_dbos if self.enable_dbos is None else self.enable_dbos,
            rollout_percent=percent,
            events_backend=self.events_backend or switches.events_backend,
            shadow_percent=(
                switches.shadow_percent if self.shadow_percent is None else self.shadow_percent
            ),
            fallback_to_kafka=switches.fallback_to_kafka
            if self.fallback_to_kafka is None
            else self.fallback_to_kafka,
        )

    @property
    def empty(self) -> bool:
        return (
            self.enable_dbos is None
            and self.rollout_percent is _KEEP
            and self.events_backend is None
            and self.shadow_percent is None
            and self.fallback_to_kafka is None
        )


class RolloutStateStore(Protocol):
    """Where the live rollout is kept, with its history (adapters/postgres/rollout.py)."""

    async def seed(self, initial: Switches, *, changed_by: str, reason: str) -> RolloutState:
        """The state in force, first storing `initial` as version 1 if there is none."""
        ...

    async def load(self) -> RolloutState | None: ...

    async def change(
        self,
        change: RolloutChange,
        *,
        changed_by: str,
        reason: str,
        expected_version: int | None = None,
    ) -> RolloutState:
        """Apply `change` atomically (one writer at a time), record it in the history and tell
        every process (the change feed). InvalidRolloutChange when it does not fit; LookupError
        when there is no state yet (seed first); with `expected_version`, RolloutSuperseded
        (and nothing changed) when the state in force is another version (compare-and-set)."""
        ...

    async def history(self, limit: int = 20) -> list[RolloutState]:
        """The most recent states, newest first."""
        ...


class RolloutFeed(Protocol):
    """News that the state changed: only a hint to re-read (the store stays the truth)."""

    async def start(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` after each change, and after each reconnect (news may be lost)."""
        ...

    async def close(self) -> None: ...


async def set_rollout(
    store: RolloutStateStore,
    change: RolloutChange,
    *,
    changed_by: str,
    reason: str,
    expected_version: int | None = None,
) -> RolloutState:
    """An operator's (or the guard's) change: who and why are required, for the history. With
    `expected_version` it applies only over that version (RolloutSuperseded otherwise)."""
    if not reason.strip():
        raise InvalidRolloutChange("a reason is required (it goes into the rollout history)")
    if not changed_by.strip():
        raise InvalidRolloutChange("who changes the rollout must be known")
    if change.empty:
        raise InvalidRolloutChange(
            "nothing to change: give a percent, the flag, a backend, a shadow percent or the "
            "Kafka fallback"
        )
    return await store.change(
        change, changed_by=changed_by, reason=reason.strip(), expected_version=expected_version
    )


class LiveRollout:
    """The routing policy in force in this process: a cached copy of the stored state.

    `current()` is what `ExecutionService.route` reads (no I/O per execution); `start` seeds
    the store from the environment when it is empty, loads it, and keeps the copy fresh.
    """

    def __init__(
        self,
        store: RolloutStateStore,
        feed: RolloutFeed | None,
        *,
        initial: Switches,
        max_depth: int,
        refresh_s: float = 1.0,
    ) -> None:
        self.store = store
        self.feed = feed
        self.refresh_s = refresh_s
        self._policy = RoutingPolicy(
            enable_dbos=initial.enable_dbos,
            rollout_percent=initial.rollout_percent,
            events_backend=initial.events_backend,
            max_depth=max_depth,
            fallback_to_kafka=initial.fallback_to_kafka,
        )
        self._initial = initial
        self.state: RolloutState | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def current(self) -> RoutingPolicy:
        return self._policy

    @property
    def version(self) -> int:
        return 0 if self.state is None else self.state.version

    def apply(self, state: RolloutState) -> bool:
        """Take `state` if it is newer than the one in force; whether it was taken."""
        if state.version <= self.version:
            return False
        s = state.switches
        self._policy = replace(
            self._policy,
            enable_dbos=s.enable_dbos,
            rollout_percent=s.rollout_percent,
            events_backend=s.events_backend,
            fallback_to_kafka=s.fallback_to_kafka,
        )
        if self.state is not None:
            log.info(
                "rollout changed",
                version=state.version,
                dbos_share=s.dbos_share,
                events_backend=s.events_backend.value,
                fallback_to_kafka=s.fallback_to_kafka,
                by=state.changed_by,
                reason=state.reason,
            )
        self.state = state
        return True

    async def refresh(self) -> None:
        state = await self.store.load()
        if state is not None:
            self.apply(state)

    async def start(self) -> None:
        """Seed (first process on an empty store), load, then follow the changes."""
        if self._task is not None:
            return
        self.apply(
            await self.store.seed(
                self._initial, changed_by=ENVIRONMENT, reason="initial state from the environment"
            )
        )
        if self.feed is not None:
            await self.feed.start(self._changed.set)
        self._task = asyncio.create_task(self._follow(), name="twintrack-rollout")

    async def _follow(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_s):
                    await self._changed.wait()
            self._changed.clear()
            try:
                await self.refresh()
            except Exception:
                log.warning("rollout state re-read failed; keeping the one in force", exc_info=True)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.feed is not None:
            await self.feed.close()
