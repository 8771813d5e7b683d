"""Rollout and rollback tooling: is a track drained, and moving unstarted work to the other track.

`rollout_status` tells an operator, per track, how many executions are in each status and how
old the oldest unfinished one is, so they know when a track is drained (nothing unfinished is
left on it) and its workers may go.

`reroute` moves executions that have not started running (`created` or `queued`) from the other
track to `to`. Each one moves under its row lock, after re-checking its status and track there,
in one transaction with its audit row (`execution_recoveries`, reason "rerouted"), so a move is
atomic and happens at most once however many reroutes, starts, stops and workers of either
track race it: the row lock serialises them, and a worker of the old track can no longer claim
it (claims check the track, adapters/postgres/claims.py). What each case needs:

=====================================  ========================================================
from → to, events, status              what the move does
=====================================  ========================================================
kafka → dbos, kafka events, created    set the track; `start` later enqueues its DBOS workflow.
kafka → dbos, kafka events, queued     set the track and enqueue the DBOS workflow (id = the
                                       execution id). The Kafka task already in the topic is
                                       harmless: its claim sees the track and skips it.
dbos → kafka, kafka events, created    set the track; no workflow exists yet (it is made on
                                       start), so there is nothing to cancel.
dbos → kafka, kafka events, queued     set the track, send a Kafka task, then cancel the DBOS
                                       workflow so it does not hold a queue slot. If DBOS
                                       already dequeued it, its step's claim sees the track and
                                       the workflow ends without running anything.
dbos → kafka, dbos events, created     (unless `include_dbos_streams=False`) set the track (and
  or queued                            send a Kafka task if queued), cancel the DBOS workflow;
                                       the events stay in its DBOS stream (the events backend
                                       is fixed at creation) and the Kafka worker keeps
                                       writing there. DBOS ends a stream read once the workflow
                                       is inactive; the DBOS stream bus then follows the stored
                                       rows, so a live reader still gets the whole stream.
→ dbos after having left dbos          held back, whatever the events backend: its DBOS
                                       workflow id (the execution id) may already be spent
                                       (cancelled, or ended by a step that saw the reroute), and
                                       DBOS would not run a workflow with that id again.
=====================================  ========================================================

The new track's task is sent before the move commits, under the lock: a worker of the new
track that gets it at once waits on the lock, and if the transaction fails after the send, the
task meets an execution still on the old track and is skipped. So a committed move always has
its delivery (no window in which a crash strands it), and a failed one has no effect. The old
track's DBOS workflow is cancelled only after the commit, best effort: cancelling before a move
that then fails would strand the execution, while a workflow that was not cancelled only finds
the execution rerouted and ends. One residue the audit rule cannot see: a move to DBOS whose
enqueue fails half-way may leave a workflow that ends at once; the execution stays on Kafka
and runs there, but a later move of it to DBOS would meet that spent workflow id.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import structlog

from twintrack.core.audit import AuditTrail
from twintrack.core.errors import NotFound
from twintrack.core.live_rollout import RolloutState, RolloutStateStore
from twintrack.core.records import ExecutionRecord
from twintrack.core.recovery_ports import HoldBack, Reason, Recovery, RecoveryAudit, RerouteStore
from twintrack.core.service import ExecutionService, TrackUnavailable
from twintrack.core.stores import LockedExecution
from twintrack.domain.execution import EventsBackend, ExecutionStatus, Track
from twintrack.domain.rollout import TrackPhase

log = structlog.get_logger()
_S = ExecutionStatus

#: the audit reason of a move, in `execution_recoveries`
REROUTED = Reason.REROUTED.value
#: statuses in which no worker has the execution yet: only these move
UNSTARTED = (_S.CREATED, _S.QUEUED)
DEFAULT_CONCURRENCY = 8

# Why an execution did not move. The first four arise from races (the candidate changed before
# its lock was taken); the last two are rules, applied already when candidates are picked.
FINISHED = "finished"
RUNNING = "already running"
ON_TRACK = "already on that track"
GONE = "no such execution"
DBOS_STREAMS = HoldBack.DBOS_STREAMS.value
LEFT_DBOS = HoldBack.LEFT_DBOS.value


def other_track(track: Track) -> Track:
    return Track.KAFKA if track is Track.DBOS else Track.DBOS


# -- status ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackStatus:
    """One track's executions by status, and the age of its oldest unfinished one."""

    track: Track
    counts: dict[ExecutionStatus, int]
    oldest_unfinished_age_s: float | None

    @property
    def unfinished(self) -> int:
        return sum(n for status, n in self.counts.items() if not status.is_terminal)

    @property
    def drained(self) -> bool:
        """Nothing unfinished is left on the track: its workers may stop."""
        return self.unfinished == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": {status.value: n for status, n in self.counts.items()},
            "unfinished": self.unfinished,
            "oldest_unfinished_age_s": self.oldest_unfinished_age_s,
            "drained": self.drained,
        }


@dataclass(frozen=True)
class RolloutStatus:
    tracks: dict[Track, TrackStatus]
    #: whether `counts` include the finished statuses (counting them scans the whole table)
    includes_finished: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "tracks": {track.value: s.to_json() for track, s in self.tracks.items()},
            "includes_finished": self.includes_finished,
        }


async def rollout_status(store: RerouteStore, *, include_finished: bool = True) -> RolloutStatus:
    """Per track: executions by status, the oldest unfinished one's age, drained or not.

    Ages come from the database clock, so a skewed operator machine cannot misreport them.
    Finished counts need a scan of the whole table; `include_finished=False` skips them on very
    large tables.
    """
    shown = [s for s in ExecutionStatus if include_finished or not s.is_terminal]
    counts: dict[Track, dict[ExecutionStatus, int]] = {t: dict.fromkeys(shown, 0) for t in Track}
    oldest: dict[Track, float | None] = dict.fromkeys(Track)
    for c in await store.counts(include_finished=include_finished):
        counts[c.track][c.status] = c.count
        previous = oldest[c.track]
        if c.oldest_age_s is not None:
            age = c.oldest_age_s
            oldest[c.track] = age if previous is None else max(previous, age)
    return RolloutStatus(
        tracks={t: TrackStatus(t, counts[t], oldest[t]) for t in Track},
        includes_finished=include_finished,
    )


@dataclass(frozen=True)
class RolloutOverview:
    """The live rollout in force, its recent history, and each track's phase and drain state."""

    state: RolloutState | None
    history: list[RolloutState]
    tracks: RolloutStatus

    @property
    def phases(self) -> dict[Track, TrackPhase]:
        """`draining` becomes `drained` once nothing unfinished is left on the track."""
        unfinished = {t: s.unfinished for t, s in self.tracks.tracks.items()}
        if self.state is None:
            return {}
        return self.state.switches.phases(unfinished)

    def to_json(self) -> dict[str, Any]:
        tracks = self.tracks.to_json()
        for track, phase in self.phases.items():
            tracks["tracks"][track.value]["phase"] = phase.value
        return {
            "state": None if self.state is None else self.state.to_json(),
            "history": [h.to_json() for h in self.history],
            **tracks,
        }


async def rollout_overview(
    states: RolloutStateStore,
    store: RerouteStore,
    *,
    history: int = 20,
    include_finished: bool = True,
) -> RolloutOverview:
    """What `twintrack rollout status` and `GET /v1/admin/rollout` show."""
    return RolloutOverview(
        state=await states.load(),
        history=await states.history(history),
        tracks=await rollout_status(store, include_finished=include_finished),
    )


# -- reroute ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Moved:
    execution_id: str
    #: the status it moved in (created or queued)
    status: ExecutionStatus
    events_backend: EventsBackend


@dataclass(frozen=True)
class Skipped:
    execution_id: str
    reason: str


@dataclass(frozen=True)
class Failed(Skipped):
    """A move that raised (e.g. the new track's broker was unreachable): nothing changed."""


@dataclass
class RerouteReport:
    """What a reroute moved (or, on a dry run, would move), and what it did not and why."""

    source: Track
    to: Track
    dry_run: bool
    moved: list[Moved] = field(default_factory=list)
    #: candidates that changed before their turn (started, finished, moved by another reroute)
    skipped: list[Skipped] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    #: unstarted executions on the source track that no reroute with these options moves
    held_back: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.source.value,
            "to": self.to.value,
            "dry_run": self.dry_run,
            "moved": [
                {"id": m.execution_id, "status": m.status.value, "events": m.events_backend.value}
                for m in self.moved
            ],
            "skipped": [{"id": s.execution_id, "reason": s.reason} for s in self.skipped],
            "failed": [{"id": s.execution_id, "reason": s.reason} for s in self.failed],
            "held_back": dict(self.held_back),
        }


def hold_back_rule(to: Track, include_dbos_streams: bool) -> HoldBack | None:
    """The rule that keeps some unstarted executions from moving to `to`, if any: nothing moves
    to DBOS after having left it (its workflow id may be spent), and DBOS-stream executions
    stay on DBOS unless `include_dbos_streams`."""
    if to is Track.DBOS:
        return HoldBack.LEFT_DBOS
    if not include_dbos_streams:
        return HoldBack.DBOS_STREAMS
    return None


async def plan_reroute(
    store: RerouteStore,
    *,
    to: Track,
    limit: int | None = None,
    owner_id: str | None = None,
    include_dbos_streams: bool = True,
) -> RerouteReport:
    """What `reroute` with these options would move now, oldest first: a dry run."""
    source = other_track(to)
    report = RerouteReport(source=source, to=to, dry_run=True)
    rule = hold_back_rule(to, include_dbos_streams)
    candidates = await store.unstarted(source, owner_id=owner_id, limit=limit, excluding=rule)
    report.moved = [Moved(c.execution_id, c.status, c.events_backend) for c in candidates]
    if rule is not None:
        held = await store.held_back(source, owner_id=owner_id, rule=rule)
        if held:
            report.held_back[rule.value] = held
    return report


async def _refusal(
    audit: RecoveryAudit, row: LockedExecution, to: Track, include_dbos_streams: bool
) -> str | None:
    """Why the locked execution must not move now (None: it moves)."""
    record = row.record
    if record.status.is_terminal:
        return FINISHED
    if record.status not in UNSTARTED:
        return RUNNING
    if record.track is to:
        return ON_TRACK
    if to is Track.KAFKA:
        if record.events_backend is EventsBackend.DBOS and not include_dbos_streams:
            return DBOS_STREAMS
        return None
    return LEFT_DBOS if await audit.left_dbos(row) else None


async def move_one(
    service: ExecutionService,
    store: RerouteStore,
    audit: AuditTrail,
    execution_id: str,
    to: Track,
    include_dbos_streams: bool,
) -> Moved | Skipped:
    """Move one execution under its row lock, or say why not; raises when delivery fails.
    (`reroute` moves a plan's candidates with it, core/bulk.py a filter's.)"""
    record: ExecutionRecord
    try:
        async with audit.locked(execution_id) as audited:
            row = audited.row
            record = row.record
            reason = await _refusal(audit.audit, row, to, include_dbos_streams)
            if reason is not None:
                return Skipped(execution_id, reason)
            await store.move(row, to)
            await audited.record(Recovery(execution_id, to, Reason.REROUTED, record.attempt))
            queue = service.queues[to]
            if record.status is _S.CREATED:
                await queue.prepare(execution_id, record.events_backend)
            else:
                # Before the commit, under the lock: see the module docstring.
                await queue.enqueue(execution_id, record.attempt + 1, record.events_backend)
    except NotFound:
        return Skipped(execution_id, GONE)
    moved = Moved(execution_id, record.status, record.events_backend)
    if record.track is Track.DBOS and (
        record.status is _S.QUEUED or record.events_backend is EventsBackend.DBOS
    ):
        try:
            await service.queues[Track.DBOS].cancel(execution_id)
        except Exception:
            # Harmless if it stays: its step finds the execution on Kafka and ends.
            log.warning("could not cancel a rerouted DBOS workflow", execution_id=execution_id)
    log.info("execution rerouted", execution_id=execution_id, to=to.value, status=record.status)
    return moved


async def reroute(
    service: ExecutionService,
    store: RerouteStore,
    audit: AuditTrail,
    *,
    to: Track,
    limit: int | None = None,
    owner_id: str | None = None,
    include_dbos_streams: bool = True,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> RerouteReport:
    """Move unstarted executions from the other track to `to` (oldest first, at most `limit`,
    only `owner_id`'s when given), each atomically and at most once: see the module docstring.

    Idempotent: running it again, or twice at once, moves nothing twice; what changed under it
    is reported as skipped. A move that fails (say, the new track's broker is down) changes
    nothing and is reported as failed; the others still move.
    """
    for track in (to, other_track(to)):
        if track not in service.queues:
            raise TrackUnavailable(f"the {track} track is not available in this process")
    plan = await plan_reroute(
        store, to=to, limit=limit, owner_id=owner_id, include_dbos_streams=include_dbos_streams
    )
    report = RerouteReport(source=plan.source, to=to, dry_run=False, held_back=dict(plan.held_back))
    slots = asyncio.Semaphore(max(1, concurrency))

    async def one(candidate: Moved) -> Moved | Skipped:
        async with slots:
            try:
                return await move_one(
                    service, store, audit, candidate.execution_id, to, include_dbos_streams
                )
            except Exception as exc:
                log.warning("reroute failed", execution_id=candidate.execution_id, exc_info=True)
                return Failed(candidate.execution_id, f"{type(exc).__name__}: {exc}")

    for outcome in await asyncio.gather(*(one(c) for c in plan.moved)):
        if isinstance(outcome, Moved):
            report.moved.append(outcome)
        elif isinstance(outcome, Failed):
            report.failed.append(outcome)
        else:
            report.skipped.append(outcome)
    return report
