"""Shadow runs: a sample of completed executions re-run on the other track, and compared.

One sweep (leader-elected, on the `Sweeper` loop) does both halves each round:

1. **Compare** the shadows that ended: both runs' streams, normalized, with the comparison
   rules of `twintrack compare` (domain/comparison.py, per-node ordering) plus status, outputs
   and error. A mismatch goes to the ledger (the most recent SHADOW_LEDGER_SIZE) with the diff,
   both ids, the flow version and both runs' events in order.
2. **Schedule** new shadows: completed root executions that finished lately, sampled by a hash
   of their id (SHADOW_PERCENT, a live field of the rollout state), each reserved once in
   `shadow_runs` (its primary key: at most one shadow per execution, whichever leader) before
   its shadow execution is made, with an id derived from the original's (so a leader that died
   in between is finished by the next). Shadows are shed first under load: none is scheduled
   while SHADOW_MAX_RUNNING are running or the target track has more than SHADOW_SHED_QUEUED
   real executions waiting; each one shed is counted (`twintrack_shadow_skipped_total`).

A shadow is an ordinary execution on the other track with `shadow_of` set: hidden from its
owner (lists, reads, streams), outside the owner's running limit, and run with side effects
off (engine/shadow.py: side-effecting nodes replay the original's result).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog

from twintrack.core.errors import AlreadyExists, NotFound
from twintrack.core.records import ExecutionRecord
from twintrack.core.rollout import other_track
from twintrack.core.service import Conflict, ExecutionService
from twintrack.domain.comparison import Ordering, RunResult, compare_runs, normalize, view
from twintrack.domain.events import Event, EventType
from twintrack.domain.execution import Track
from twintrack.domain.flow import Flow
from twintrack.domain.shadow import shadow_execution_id, shadow_sampled
from twintrack.engine.shadow import ShadowReplay, replay_reason
from twintrack.observability.metrics import SHADOW_RUNS, SHADOW_SKIPPED

log = structlog.get_logger()

RUNNING = "running"
MATCHED = "matched"
MISMATCHED = "mismatched"
#: why a sampled execution got no shadow (the `reason` label of the skipped count)
SHED_LIMIT = "limit"
SHED_BUSY = "busy"
# Reading one finished stream normally takes milliseconds.
_READ_S = 10.0


@dataclass(frozen=True)
class ShadowPolicy:
    """The shadow settings (SHADOW_* in config.py); the percentage is live (rollout state)."""

    max_running: int = 4
    ledger_size: int = 100
    #: executions that finished longer ago than this are not shadowed any more
    lookback_s: float = 600.0
    #: shed when the target track has more real executions queued than this
    shed_queued: int = 50
    batch: int = 50


@dataclass(frozen=True)
class ShadowRun:
    """One shadow run: the execution it shadows, and how the two compared."""

    original_id: str
    shadow_id: str
    owner_id: str
    flow_id: str
    flow_version: int
    original_track: Track
    shadow_track: Track
    status: str = RUNNING
    replayed: dict[str, str] = field(default_factory=dict)
    scheduled_at: datetime | None = None
    compared_at: datetime | None = None


@dataclass(frozen=True)
class Mismatch:
    """One entry of the mismatch ledger."""

    original_id: str
    shadow_id: str
    flow_id: str
    flow_version: int
    original_track: Track
    shadow_track: Track
    diff: str
    #: both runs' normalized events, in stream order
    original_events: list[str]
    shadow_events: list[str]
    replayed: dict[str, str] = field(default_factory=dict)
    id: int | None = None
    recorded_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "recorded_at": self.recorded_at.isoformat() if self.recorded_at else None,
            "original_id": self.original_id,
            "shadow_id": self.shadow_id,
            "flow_id": self.flow_id,
            "flow_version": self.flow_version,
            "original_track": self.original_track.value,
            "shadow_track": self.shadow_track.value,
            "diff": self.diff,
            "original_events": self.original_events,
            "shadow_events": self.shadow_events,
            "replayed": self.replayed,
        }


@dataclass(frozen=True)
class ShadowOutcomes:
    """Shadow runs compared in a window (what the guard judges)."""

    compared: int = 0
    mismatched: int = 0

    @property
    def mismatch_rate(self) -> float | None:
        return self.mismatched / self.compared if self.compared else None


class ShadowStore(Protocol):
    """Shadow runs and the mismatch ledger (adapters/postgres/shadow.py)."""

    async def candidates(
        self, *, lookback_s: float, after: tuple[datetime, str] | None, limit: int
    ) -> list[ExecutionRecord]:
        """Completed root executions, not shadows and not yet shadowed, that finished within
        `lookback_s`, ordered by (finished_at, id), after `after`."""
        ...

    async def reserve(self, run: ShadowRun) -> bool:
        """Record the run as `running`; False when the execution already has one."""
        ...

    async def running(self) -> list[ShadowRun]: ...

    async def get(self, original_id: str) -> ShadowRun | None:
        """The shadow run of an execution, if it has one."""
        ...

    async def queued(self, track: Track) -> int:
        """Real (not shadow) executions of the track waiting for a worker."""
        ...

    async def finish(
        self,
        original_id: str,
        status: str,
        replayed: dict[str, str],
        mismatch: Mismatch | None,
        *,
        ledger_size: int,
    ) -> None:
        """Record the outcome and, for a mismatch, its ledger entry, keeping only the most
        recent `ledger_size` entries; all at once."""
        ...

    async def mismatches(self, limit: int = 20) -> list[Mismatch]:
        """The ledger, newest first."""
        ...

    async def outcomes(self, window_s: float) -> ShadowOutcomes:
        """Shadow runs compared within the window."""
        ...


@dataclass
class ShadowRound:
    """What one sweep did."""

    compared: int = 0
    mismatched: int = 0
    scheduled: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


async def read_events(service: ExecutionService, record: ExecutionRecord) -> list[Event]:
    """A finished execution's whole stream (any owner's)."""
    found: list[Event] = []
    events = service.buses[record.events_backend].subscribe(record.id, 0)
    try:
        async with asyncio.timeout(_READ_S):
            async for event in events:
                found.append(event)
                if event.type.is_terminal:
                    break
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
    return found


def side_effect_nodes(flow: Flow) -> list[str]:
    return [n.id for n in flow.nodes.values() if n.node_type.side_effects]


async def load_replay(
    service: ExecutionService, shadow: ExecutionRecord, flow: Flow
) -> ShadowReplay:
    """What a shadow run replays instead of running: the original's side-effecting nodes."""
    assert shadow.shadow_of is not None
    original = await service.executions.get(shadow.shadow_of)
    return ShadowReplay.from_events(await read_events(service, original), side_effect_nodes(flow))


def replayed_nodes(
    flow: Flow, original_events: Sequence[Event], shadow_events: Sequence[Event]
) -> dict[str, str]:
    """Which nodes the shadow reached but did not run, and why (the engine's own reasons)."""
    reached = {e.data.get("node_id") for e in shadow_events if e.type is EventType.NODE_STARTED}
    replay = ShadowReplay.from_events(original_events, side_effect_nodes(flow))
    return {
        node_id: replay_reason(flow.nodes[node_id].type, recorded)
        for node_id, recorded in replay.recorded.items()
        if node_id in reached
    }


def compare_shadow(
    original: ExecutionRecord,
    original_events: Sequence[Event],
    shadow: ExecutionRecord,
    shadow_events: Sequence[Event],
) -> tuple[bool, str, list[str], list[str]]:
    """(equal, diff, original's lines, shadow's lines) under the comparison rules."""
    streams = [[e.model_dump(mode="json") for e in s] for s in (original_events, shadow_events)]
    ours = f"original:{original.track.value}"
    theirs = f"shadow:{shadow.track.value}"
    report = compare_runs(
        {
            ours: RunResult.from_row(original.model_dump(mode="json"), streams[0]),
            theirs: RunResult.from_row(shadow.model_dump(mode="json"), streams[1]),
        },
        reference=ours,
        ordering=Ordering.PER_NODE,
    )
    mode = report.modes[1]
    diff = mode.diff or "\n".join(mode.problems)
    lines = [view(normalize(s), Ordering.STRICT) for s in streams]
    return mode.ok, diff, lines[0], lines[1]


class ShadowSweep:
    """One round per `sweep`: compare the shadows that ended, then schedule new ones."""

    def __init__(
        self,
        *,
        service: ExecutionService,
        store: ShadowStore,
        percent: Callable[[], Awaitable[int]],
        policy: ShadowPolicy,
    ) -> None:
        """`percent` answers the SHADOW_PERCENT in force now (the live rollout state)."""
        self.service = service
        self.store = store
        self.percent = percent
        self.policy = policy
        self._after: tuple[datetime, str] | None = None

    async def sweep(self) -> ShadowRound:
        result = ShadowRound()
        running = await self.store.running()
        still = 0
        for run in running:
            try:
                outcome = await self._compare(run)
            except Exception:
                # One shadow that cannot be read (its stream expired, a flow gone) must not
                # hold up the others: it is tried again next round.
                log.warning("shadow run not compared", execution_id=run.original_id, exc_info=True)
                outcome = None
            if outcome is None:
                still += 1
            else:
                result.compared += 1
                result.mismatched += outcome is MISMATCHED
        percent = int(await self.percent())
        if percent > 0:
            await self._schedule(percent, still, result)
        return result

    async def _compare(self, run: ShadowRun) -> str | None:
        """The outcome once the shadow ended (recorded); None while it runs."""
        try:
            shadow = await self.service.executions.get(run.shadow_id)
        except NotFound:  # reserved by a leader that died before making it
            original = await self.service.executions.get(run.original_id)
            await self._start(original, run.shadow_id)
            return None
        if not shadow.status.is_terminal:
            return None
        original = await self.service.executions.get(run.original_id)
        original_events = await read_events(self.service, original)
        shadow_events = await read_events(self.service, shadow)
        flow = await self.service.flow_of(original)
        replayed = replayed_nodes(flow, original_events, shadow_events)
        equal, diff, ours, theirs = compare_shadow(original, original_events, shadow, shadow_events)
        status = MATCHED if equal else MISMATCHED
        mismatch = None
        if not equal:
            mismatch = Mismatch(
                original_id=original.id,
                shadow_id=shadow.id,
                flow_id=original.flow_id,
                flow_version=original.flow_version,
                original_track=original.track,
                shadow_track=shadow.track,
                diff=diff,
                original_events=ours,
                shadow_events=theirs,
                replayed=replayed,
            )
            log.warning(
                "shadow run differs from the original",
                execution_id=original.id,
                shadow_id=shadow.id,
                flow_id=original.flow_id,
            )
        await self.store.finish(
            run.original_id, status, replayed, mismatch, ledger_size=self.policy.ledger_size
        )
        SHADOW_RUNS.labels(track=shadow.track.value, result=status).inc()
        return status

    async def _schedule(self, percent: int, running: int, result: ShadowRound) -> None:
        p = self.policy
        candidates = await self.store.candidates(
            lookback_s=p.lookback_s, after=self._after, limit=p.batch
        )
        busy: dict[Track, bool] = {}
        for original in candidates:
            assert original.finished_at is not None
            self._after = (original.finished_at, original.id)
            if not shadow_sampled(original.id, percent) or not _comparable(original):
                continue
            target = other_track(original.track)
            if target not in busy:
                busy[target] = await self.store.queued(target) > p.shed_queued
            reason = SHED_LIMIT if running >= p.max_running else SHED_BUSY if busy[target] else None
            if reason is not None:
                result.skipped[reason] = result.skipped.get(reason, 0) + 1
                SHADOW_SKIPPED.labels(track=target.value, reason=reason).inc()
                continue
            shadow_id = shadow_execution_id(original.id)
            reserved = await self.store.reserve(
                ShadowRun(
                    original_id=original.id,
                    shadow_id=shadow_id,
                    owner_id=original.owner_id,
                    flow_id=original.flow_id,
                    flow_version=original.flow_version,
                    original_track=original.track,
                    shadow_track=target,
                )
            )
            if not reserved:
                continue
            await self._start(original, shadow_id)
            running += 1
            result.scheduled += 1

    async def _start(self, original: ExecutionRecord, shadow_id: str) -> None:
        """Make and start the shadow execution (safe to repeat: its id is fixed)."""
        try:
            await self.service.create(
                original.owner_id,
                original.flow_id,
                version=original.flow_version,
                options=original.options,
                events=original.trigger_events,
                track=other_track(original.track),
                execution_id=shadow_id,
                shadow_of=original.id,
            )
        except AlreadyExists:
            await self.service.announce_if_missing(shadow_id)
        with contextlib.suppress(Conflict):  # it ended already
            await self.service.start(None, shadow_id)
        log.info("shadow run scheduled", execution_id=original.id, shadow_id=shadow_id)


def _comparable(record: ExecutionRecord) -> bool:
    """Whether a shadow could match: not a debug run or one with breakpoints (the shadow would
    pause with nobody to resume it), nor one recovery re-ran (its stream has the re-run's
    `execution.retrying`, which no first run has)."""
    return not (record.options.debug or record.options.breakpoints or record.attempt > 1)
