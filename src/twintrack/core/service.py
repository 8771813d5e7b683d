"""ExecutionService: create, start, command, watch and inspect executions, whatever their track.

The API, the workers (for child executions) and the recovery sweeper all go through it. Events
the service writes itself (created, queued, stopped or failed before any worker holds the
execution) are published under the execution's row lock, before the status moves, so they
never interleave with each other and a worker always continues numbering after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from twintrack.core.errors import AlreadyExists, NotFound
from twintrack.core.ports import AdmissionProbe, CommandChannel, EventBus, Refusal, TaskQueue
from twintrack.core.records import MAX_PAGE_SIZE, ExecutionRecord, FlowRecord, Page
from twintrack.core.stores import ExecutionStore, FlowStore, LockedExecution
from twintrack.domain.commands import Command
from twintrack.domain.events import Event, EventType
from twintrack.domain.execution import (
    EventsBackend,
    ExecutionOptions,
    ExecutionStatus,
    Track,
    TriggerEvent,
)
from twintrack.domain.flow import Flow, FlowValidationError, check_options, validate_flow
from twintrack.domain.ids import EXECUTION_PREFIX, new_execution_id
from twintrack.domain.limits import LimitExceeded, OwnerLimits
from twintrack.domain.rollout import choose_track, events_backend_for
from twintrack.engine import EventTooLarge, check_event_size, result_from_terminal_event
from twintrack.nodes.base import NodeError, SpawnedChild, child_depth
from twintrack.nodes.registry import NodeRegistry
from twintrack.observability.metrics import ADMISSION_REFUSALS
from twintrack.observability.tracing import current_traceparent

log = structlog.get_logger()

_S = ExecutionStatus
_FLOW_CACHE_SIZE = 512
# What `execution.created` carries besides the trigger events (ids, names, depth), at most.
_CREATED_FIELDS_BYTES = 1024


class Conflict(Exception):
    """The request does not fit the execution's state (for example, a command on a finished one)."""


class IdempotencyKeyReused(Exception):
    """An idempotency key sent again with a different request than the one it first came with:
    answering with the first request's execution would hide that the caller's intent changed."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was first used with a different request; "
            "send that request again, or use a new key for this one"
        )
        self.key = key


class TrackUnavailable(Exception):
    """No task queue for the track this execution must go to is configured in this process."""


class DeliveryFailed(TrackUnavailable):
    """A start is stored (`queued`) but its task did not reach the track: the repair sweeps
    deliver it, and starting again is harmless, so the caller hears "retry later" (503), never
    an internal error."""


class ParentStopping(Exception):
    """A child was not started: its parent is being stopped (the child ended `stopped`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ExecutionTree:
    """One page of a tree; `tree_status` and `size` cover the whole tree."""

    root_id: str
    executions: list[ExecutionRecord]
    tree_status: ExecutionStatus
    size: int
    next_cursor: str | None = None


@dataclass(frozen=True)
class RoutingPolicy:
    """Settings that decide where a new execution goes."""

    enable_dbos: bool
    rollout_percent: int | None
    events_backend: EventsBackend
    max_depth: int
    #: a root routed to DBOS whose DBOS admission fails is created on Kafka instead
    fallback_to_kafka: bool = False


class PolicySource(Protocol):
    """Where the service reads the routing policy in force (core/live_rollout.py keeps a live
    one); read once per new execution, so it must answer from memory."""

    def current(self) -> RoutingPolicy: ...


@dataclass(frozen=True)
class StaticPolicy:
    """A fixed policy: the environment's (ROLLOUT_SOURCE=environment), or a test's."""

    policy: RoutingPolicy

    def current(self) -> RoutingPolicy:
        return self.policy


def child_execution_id(parent_id: str, node_id: str) -> str:
    """Deterministic, so a parent that is re-run after a crash finds its children, not new ones."""
    digest = hashlib.sha256(f"{parent_id}/{node_id}".encode()).hexdigest()[:32]
    return f"{EXECUTION_PREFIX}_{digest}"


def request_fingerprint(
    flow_id: str,
    version: int | None,
    options: ExecutionOptions | None,
    events: Sequence[TriggerEvent],
    track: Track | None,
) -> str:
    """What an idempotency key is checked against: the create's arguments, canonically
    (an absent `options` and the defaults are the same request)."""
    request = {
        "flow_id": flow_id,
        "version": version,
        "options": (options or ExecutionOptions()).model_dump(mode="json"),
        "events": [e.model_dump(mode="json") for e in events],
        "track": None if track is None else track.value,
    }
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _as_utc(moment: datetime | None) -> datetime | None:
    """The instant in UTC; a naive one is read as UTC, the zone every stored time is in. An
    instant at the very edge of datetime's range whose UTC falls outside it is clamped."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        edge = datetime.min if moment.year == datetime.min.year else datetime.max
        return edge.replace(tzinfo=UTC)


def aggregate_status(statuses: Collection[ExecutionStatus]) -> ExecutionStatus:
    """A tree is running while any member is unfinished, else its worst ending."""
    for status in (_S.RUNNING, _S.PAUSED, _S.QUEUED, _S.CREATED, _S.FAILED, _S.STOPPED):
        if status in statuses:
            return _S.RUNNING if not status.is_terminal else status
    return _S.COMPLETED


class ExecutionService:
    def __init__(
        self,
        *,
        flows: FlowStore,
        executions: ExecutionStore,
        registry: NodeRegistry,
        queues: Mapping[Track, TaskQueue],
        buses: Mapping[EventsBackend, EventBus],
        commands: CommandChannel,
        policy: RoutingPolicy | PolicySource,
        limits: OwnerLimits | None = None,
        terminal_row_wait_s: float = 60.0,
        idempotency_key_ttl_s: float = 24 * 3600.0,
        admission: Mapping[Track, AdmissionProbe] | None = None,
    ) -> None:
        self.flows = flows
        self.executions = executions
        self.registry = registry
        self.queues = dict(queues)
        self.buses = dict(buses)
        self.commands = commands
        self.policy_source: PolicySource = (
            StaticPolicy(policy) if isinstance(policy, RoutingPolicy) else policy
        )
        self.limits = limits or OwnerLimits()
        self.terminal_row_wait_s = terminal_row_wait_s
        self.idempotency_key_ttl_s = idempotency_key_ttl_s
        #: per track, whether it admits new executions now (a track without one always does)
        self.admission = dict(admission or {})
        self._flow_cache: OrderedDict[tuple[str, int], Flow] = OrderedDict()

    @property
    def policy(self) -> RoutingPolicy:
        """The routing policy in force now."""
        return self.policy_source.current()

    @policy.setter
    def policy(self, policy: RoutingPolicy) -> None:
        """Pin a fixed policy in this process (tests, tools): the live state no longer applies."""
        self.policy_source = StaticPolicy(policy)

    # -- flows -----------------------------------------------------------------------------

    def _cached(self, flow_id: str, version: int) -> Flow | None:
        flow = self._flow_cache.get((flow_id, version))
        if flow is not None:
            self._flow_cache.move_to_end((flow_id, version))
        return flow

    def compile(self, record: FlowRecord) -> Flow:
        """The validated flow of one stored version (versions are immutable, so cached)."""
        flow = self._cached(record.id, record.version)
        if flow is None:
            flow = validate_flow(record.definition, self.registry)
            self._flow_cache[(record.id, record.version)] = flow
            if len(self._flow_cache) > _FLOW_CACHE_SIZE:
                self._flow_cache.popitem(last=False)
        return flow

    async def flow_of(self, execution: ExecutionRecord) -> Flow:
        """The flow version an execution pinned: read once per process, then from the cache
        (a version never changes, and the execution's own row already proved ownership)."""
        flow = self._cached(execution.flow_id, execution.flow_version)
        if flow is not None:
            return flow
        record = await self.flows.get(execution.owner_id, execution.flow_id, execution.flow_version)
        return self.compile(record)

    # -- create and start ------------------------------------------------------------------

    def route(self, owner_id: str) -> Track:
        return self._route(owner_id, self.policy)

    @staticmethod
    def _route(owner_id: str, policy: RoutingPolicy) -> Track:
        return choose_track(
            owner_id, enable_dbos=policy.enable_dbos, rollout_percent=policy.rollout_percent
        )

    async def create(
        self,
        owner_id: str,
        flow_id: str,
        *,
        version: int | None = None,
        options: ExecutionOptions | None = None,
        events: Sequence[TriggerEvent] = (),
        track: Track | None = None,
        parent: ExecutionRecord | None = None,
        execution_id: str | None = None,
        shadow_of: str | None = None,
    ) -> ExecutionRecord:
        """Create an execution in `created` with `execution.created` (index 0) in its stream.

        With `shadow_of`, a shadow run of that execution (core/shadow.py): hidden from the
        owner, outside the owner's running limit.

        A root goes where the rollout routes it, unless `track` is given (admin keys). Its
        track must admit it first (the DBOS system schema there, current and usable): when it
        does not, a routed root falls back to Kafka if the rollout says so (DBOS_FALLBACK_TO_
        KAFKA; the row keeps `fallback_reason`), else the create is refused. The same holds when
        DBOS refuses the workflow a DBOS-streams execution needs at creation. Either way it is
        decided once, before `execution.created`: the stream never names a track it left.
        Children follow their parent's track without asking.

        Raises NotFound for an unknown flow or version, FlowValidationError for options that do
        not fit the flow, TrackUnavailable when this process cannot reach the chosen track or
        the track refuses admission without a fallback.
        """
        options = options or ExecutionOptions()
        flow_record = await self.flows.get(owner_id, flow_id, version)
        check_options(self.compile(flow_record), options)
        fallback: Refusal | None = None
        may_fall_back = False
        if parent is not None:
            track, backend = parent.track, parent.events_backend
        else:
            # One snapshot decides both: a rollout change in between cannot mix two states.
            policy = self.policy
            routed = track is None
            track = track or self._route(owner_id, policy)
            backend = events_backend_for(track, policy.events_backend)
            may_fall_back = (
                routed
                and policy.fallback_to_kafka
                and track is not Track.KAFKA
                and Track.KAFKA in self.queues
            )
            refusal = await self._refusal(track)
            if refusal is not None:
                if not may_fall_back:
                    ADMISSION_REFUSALS.labels(
                        track=track.value, cause=refusal.cause, outcome="refused"
                    ).inc()
                    why = "DBOS_FALLBACK_TO_KAFKA is off" if routed else "the track was chosen"
                    raise TrackUnavailable(
                        f"the {track} track cannot admit new executions ({why}): {refusal.message}"
                    )
                fallback = self._count_fallback(track, refusal)
                track, backend = Track.KAFKA, EventsBackend.KAFKA
        if track not in self.queues:
            raise TrackUnavailable(f"the {track} track is not available in this deployment")
        if backend not in self.buses:
            raise TrackUnavailable(f"the {backend} events backend is not available here")
        self._check_created_fits(events, self.buses[backend].max_event_bytes)
        record = await self.executions.create(
            owner_id=owner_id,
            flow_id=flow_record.id,
            flow_version=flow_record.version,
            track=track,
            events_backend=backend,
            options=options,
            trigger_events=events,
            parent_id=parent.id if parent else None,
            execution_id=execution_id or new_execution_id(),
            next_event_index=1,
            limits=self.limits,
            shadow_of=shadow_of,
            fallback_reason=None if fallback is None else fallback.message,
        )
        try:
            await self.queues[record.track].prepare(record.id, record.events_backend)
        except Exception as exc:
            if not may_fall_back or fallback is not None:
                raise
            record = await self._fall_back(record, exc)
        await self._publish_created(record)
        return record

    async def _refusal(self, track: Track) -> Refusal | None:
        probe = self.admission.get(track)
        return None if probe is None else await probe.refusal()

    @staticmethod
    def _count_fallback(track: Track, refusal: Refusal) -> Refusal:
        ADMISSION_REFUSALS.labels(track=track.value, cause=refusal.cause, outcome="fallback").inc()
        log.warning(
            "DBOS admission failed; execution created on kafka",
            cause=refusal.cause,
            reason=refusal.message,
        )
        return refusal

    async def _fall_back(self, record: ExecutionRecord, error: Exception) -> ExecutionRecord:
        """The track refused what a new row needs first (DBOS: its parked workflow): move the
        row, which nothing has announced yet, to Kafka with Kafka events."""
        refusal = self._count_fallback(
            record.track,
            Refusal(
                "enqueue_failed", f"DBOS refused the workflow: {type(error).__name__}: {error}"
            ),
        )
        moved = await self.executions.fall_back(record.id, refusal.message)
        with contextlib.suppress(Exception):  # a half-made workflow finds the row on Kafka
            await self.queues[record.track].cancel(record.id)
        return moved

    async def create_once(
        self,
        owner_id: str,
        key: str,
        flow_id: str,
        *,
        version: int | None = None,
        options: ExecutionOptions | None = None,
        events: Sequence[TriggerEvent] = (),
        track: Track | None = None,
    ) -> tuple[ExecutionRecord, bool]:
        """`create` under an idempotency key: (the execution, whether this call created it).

        The key is reserved in Postgres with the execution's id chosen up front, so every
        request with the key, concurrent or retried within IDEMPOTENCY_KEY_TTL_S, ends up with
        that one execution. A request that finds the key but not yet its execution (the first
        one crashed, or is still creating it) creates or completes it under the same id, as a
        re-run parent does for its children. IdempotencyKeyReused for another request under
        the key. A create refused as asked (no such flow, options that do not fit) frees the
        key it reserved, so a corrected request may use it.
        """
        fingerprint = request_fingerprint(flow_id, version, options, events, track)
        held = await self.executions.reserve_key(
            owner_id, key, fingerprint, new_execution_id(), self.idempotency_key_ttl_s
        )
        if held.request_hash != fingerprint:
            raise IdempotencyKeyReused(key)
        if not held.reserved:
            try:
                await self.executions.get(held.execution_id, owner_id)
            except NotFound:
                pass  # not made yet: the first request crashed, or is about to insert it
            else:
                return await self.announce_if_missing(held.execution_id), False
        try:
            record = await self.create(
                owner_id,
                flow_id,
                version=version,
                options=options,
                events=events,
                track=track,
                execution_id=held.execution_id,
            )
        except AlreadyExists:  # a concurrent request with the key inserted it first
            return await self.announce_if_missing(held.execution_id), False
        except (NotFound, FlowValidationError, EventTooLarge):
            # Refused as asked: the same request fails the same way for anyone, so the key
            # protects nothing and may serve a corrected request. After any other failure it
            # stays: a request still creating under it (or a retry) must keep its execution.
            if held.reserved:
                with contextlib.suppress(Exception):  # the refusal is the answer
                    await self.executions.release_key(owner_id, key, held.execution_id)
            raise
        return record, True

    async def _announce_created(self, record: ExecutionRecord) -> None:
        """What the track needs first, then `execution.created` (index 0): both idempotent, so
        a re-run of a parent can redo them for a child a crash left without them."""
        await self.queues[record.track].prepare(record.id, record.events_backend)
        await self._publish_created(record)

    async def _publish_created(self, record: ExecutionRecord) -> None:
        created = {
            "flow_id": record.flow_id,
            "flow_version": record.flow_version,
            "track": record.track.value,
            "events_backend": record.events_backend.value,
            "depth": record.depth,
            "parent_id": record.parent_id,
            "root_id": record.root_id,
            "events": [e.model_dump(mode="json") for e in record.trigger_events],
        }
        if record.fallback_reason is not None:
            created["fallback_reason"] = record.fallback_reason
        event = Event(
            execution_id=record.id, index=0, type=EventType.EXECUTION_CREATED, data=created
        )
        await self.buses[record.events_backend].publish(event, wait=True)

    @staticmethod
    def _check_created_fits(events: Sequence[TriggerEvent], limit: int) -> None:
        """Refuse trigger events too large for `execution.created` before any row exists
        (EventTooLarge: a 413 for the API, the node's failure for a child)."""
        provisional = Event(
            execution_id="",
            index=0,
            type=EventType.EXECUTION_CREATED,
            data={"events": [e.model_dump(mode="json") for e in events]},
        )
        check_event_size(provisional, limit, extra_bytes=_CREATED_FIELDS_BYTES)

    async def start(self, owner_id: str | None, execution_id: str) -> ExecutionRecord:
        """Queue a created execution for a worker. Starting twice is harmless; finished: 409.

        LimitExceeded (429) when the owner already has MAX_RUNNING_EXECUTIONS_PER_OWNER
        started, unfinished executions: the execution stays `created`, to be started later.
        """
        async with self.executions.locked(execution_id, owner_id) as row:
            record = row.record
            if record.status.is_terminal:
                raise Conflict(f"execution {execution_id} is already {record.status}")
            if record.status is not _S.CREATED:
                return record
            if record.shadow_of is None:  # shadows are bounded by SHADOW_MAX_RUNNING instead
                cap = self.limits.max_running_executions_per_owner
                self.limits.check_running(await row.admit_running(cap), record.owner_id)
            traceparent = current_traceparent()
            if traceparent is not None:
                await row.remember_trace(traceparent)
            record = await self.write_locked(
                row, _S.QUEUED, EventType.EXECUTION_QUEUED, {"track": record.track}
            )
        try:
            await self.queues[record.track].enqueue(
                record.id, record.attempt + 1, record.events_backend
            )
        except Exception as exc:
            raise DeliveryFailed(
                f"execution {record.id} is queued but its task did not reach the "
                f"{record.track} track ({type(exc).__name__}); it will be delivered"
            ) from exc
        return record

    async def start_new(self, owner_id: str, record: ExecutionRecord) -> ExecutionRecord:
        """`start` for a create that asked to run at once (`start: true`): one request instead
        of two, the same rules as `start` (its limit, its errors). A create replayed under its
        idempotency key starts the execution only if it is still `created` (the first try's
        start may have failed); one that has moved on is answered as it is, even ended."""
        if record.status is not _S.CREATED:
            return record
        try:
            return await self.start(owner_id, record.id)
        except Conflict:  # stopped between the create and the start: answer what it is
            return await self.executions.get(record.id, owner_id)

    async def write_locked(
        self,
        row: LockedExecution,
        target: ExecutionStatus,
        event_type: EventType,
        data: dict[str, Any],
        *,
        index: int | None = None,
        error_message: str | None = None,
    ) -> ExecutionRecord:
        """Publish one event, then move the status, under the row lock `row` holds."""
        record = row.record
        at = record.next_event_index if index is None else index
        event = Event(execution_id=record.id, index=at, type=event_type, data=data)
        await self.buses[record.events_backend].publish(event, wait=True)
        return await row.transition(target, next_event_index=at + 1, error_message=error_message)

    # -- commands --------------------------------------------------------------------------

    async def command(
        self, owner_id: str | None, execution_id: str, command: Command, reason: str | None = None
    ) -> ExecutionRecord:
        """Apply a user command. Durable: a worker that picks the execution up later obeys it."""
        if command is Command.START:
            return await self.start(owner_id, execution_id)
        record = await self.executions.get(execution_id, owner_id)
        if record.status.is_terminal:
            raise Conflict(f"execution {execution_id} is already {record.status}")
        if command is Command.STOP:
            await self.stop_tree(record, reason or "stopped by request")
            return await self.executions.get(execution_id, owner_id)
        await self.commands.send(execution_id, command, reason)
        return record

    async def stop_tree(self, record: ExecutionRecord, reason: str) -> None:
        """Stop an execution and every unfinished descendant, including children spawned while
        the stop runs: each member's stop is stored before the tree is read again, and a spawn
        under a member whose stop is stored ends its child itself (see `spawn_child`), so
        re-reading until nothing new appears leaves no child behind."""
        handled: set[str] = set()
        await self._stop_one(record.id, reason)
        handled.add(record.id)
        while True:
            fresh = [
                m
                for m in await self.executions.tree(record.id)
                if m.id not in handled and not m.status.is_terminal
            ]
            if not fresh:
                return
            for member in fresh:
                await self._stop_one(member.id, f"ancestor {record.id} was stopped")
                handled.add(member.id)

    async def _stop_one(self, execution_id: str, reason: str) -> None:
        try:
            async with self.executions.locked(execution_id) as row:
                record = row.record
                if record.status.is_terminal:
                    return
                if record.status in (_S.CREATED, _S.QUEUED):
                    # No worker holds it: end it here. A worker that gets its task later skips it;
                    # the track drops what it prepared once the ending is in the stream.
                    await self._end_unclaimed(
                        row,
                        _S.STOPPED,
                        EventType.EXECUTION_STOPPED,
                        {"reason": reason, "cancelled_nodes": [], "outputs": record.outputs},
                        reason,
                    )
                    await self.queues[record.track].cancel(execution_id)
                    return
        except TimeoutError:
            # A stalled events backend (the caller gets a 503): the event may still land
            # later, so store the stop too. Whoever runs the execution next stops it at once,
            # and the row ends `stopped` like the stream.
            await self.commands.send(execution_id, Command.STOP, reason)
            raise
        await self.commands.send(execution_id, Command.STOP, reason)

    async def _end_unclaimed(
        self,
        row: LockedExecution,
        target: ExecutionStatus,
        event_type: EventType,
        data: dict[str, Any],
        reason: str,
    ) -> None:
        """End an execution no worker holds, under its row lock.

        The row learns how far the stream goes only when a run ends, so after a crashed run
        (attempt > 0: re-queued, or abandoned) the index comes from the bus itself; an ending
        that run already wrote stands instead of a second one.
        """
        record = row.record
        index = record.next_event_index
        if record.attempt > 0:
            last = await self.buses[record.events_backend].last_event(record.id)
            if last is not None and last.type.is_terminal:
                ended = result_from_terminal_event(last)
                await row.transition(
                    ended.status,
                    outputs=ended.outputs,
                    error_message=ended.error.message if ended.error else None,
                    error_node_id=ended.error.node_id if ended.error else None,
                    next_event_index=last.index + 1,
                )
                return
            if last is not None:
                index = max(index, last.index + 1)
        await self.write_locked(row, target, event_type, data, index=index, error_message=reason)

    async def fail_unclaimed(
        self, execution_id: str, reason: str, *, from_statuses: Sequence[ExecutionStatus]
    ) -> bool:
        """End an execution no worker holds as failed (start timeout, attempts exhausted).

        Returns False when the execution had moved on.
        """
        async with self.executions.locked(execution_id) as row:
            if row.record.status not in from_statuses:
                return False
            await self.fail_locked(row, reason)
        return True

    async def fail_locked(self, row: LockedExecution, reason: str) -> None:
        """`fail_unclaimed` within the caller's transaction (holding the row lock), so a caller
        can end the claim in the same commit (giving up after MAX_ATTEMPTS)."""
        record = row.record
        await self._end_unclaimed(
            row,
            _S.FAILED,
            EventType.EXECUTION_FAILED,
            {"error": {"message": reason, "node_id": None}, "outputs": record.outputs},
            reason,
        )
        if record.status is _S.CREATED:
            await self.queues[record.track].cancel(record.id)

    # -- children --------------------------------------------------------------------------

    async def spawn_child(
        self,
        parent: ExecutionRecord,
        *,
        node_id: str,
        event: str,
        payload: Any,
        flow_id: str | None,
    ) -> SpawnedChild:
        """Create and start a child on the parent's track; the parent does not wait for it."""
        child_depth(parent.depth, self.policy.max_depth)
        same_flow = flow_id is None or flow_id == parent.flow_id
        child_id = child_execution_id(parent.id, node_id)
        options = ExecutionOptions(
            max_concurrency=parent.options.max_concurrency,
            node_timeout_s=parent.options.node_timeout_s,
            flow_timeout_s=parent.options.flow_timeout_s,
        )
        try:
            child = await self.create(
                parent.owner_id,
                parent.flow_id if same_flow else str(flow_id),
                version=parent.flow_version if same_flow else None,
                options=options,
                events=[TriggerEvent(name=event, payload=payload)],
                parent=parent,
                execution_id=child_id,
            )
        except AlreadyExists:
            child = await self.announce_if_missing(child_id)
        except NotFound:
            raise NodeError(f"flow '{flow_id}' does not exist for this owner") from None
        except LimitExceeded as exc:
            raise NodeError(f"cannot spawn a child: {exc}") from None
        # Asked only now that the child row is committed: a stop stored before this read is
        # seen here, and one stored after it re-reads the tree and finds the child.
        stopping = await self.executions.stop_reason(parent.id)
        if stopping is not None:
            await self._stop_one(child.id, f"ancestor {parent.id} was stopped")
            raise ParentStopping(stopping)
        if child.status is _S.CREATED:
            try:
                await self.start(None, child.id)
            except Conflict:
                pass  # a stop of the tree ended it between create and start
            except LimitExceeded as exc:
                # Nobody would ever start this child: end it, so no child is left `created`.
                reason = f"not started: {exc}"
                await self.fail_unclaimed(child.id, reason, from_statuses=[_S.CREATED])
                raise NodeError(f"cannot start child {child.id}: {exc}") from None
        return SpawnedChild(execution_id=child.id, flow_id=child.flow_id, depth=child.depth)

    async def announce_if_missing(self, child_id: str) -> ExecutionRecord:
        """A child an earlier attempt of its parent made (found by a re-run, or by the child
        sweeper). One it started (or that has ended) is left alone: it is not run twice. One a
        crash left in `created` before its `execution.created` was written gets it now, so its
        stream starts at index 0 whatever happens to it next."""
        child = await self.executions.get(child_id)
        if child.status is _S.CREATED:
            bus = self.buses[child.events_backend]
            if await bus.last_event(child.id) is None:
                await self._announce_created(child)
        return child

    # -- reading ---------------------------------------------------------------------------

    async def get(self, owner_id: str | None, execution_id: str) -> ExecutionRecord:
        return await self.executions.get(execution_id, owner_id)

    async def finished_among(self, execution_ids: Collection[str]) -> set[str]:
        """Which of these executions have ended (any owner's: callers checked ownership)."""
        return await self.executions.finished_among(execution_ids)

    async def list(
        self,
        owner_id: str,
        *,
        flow_id: str | None = None,
        status: ExecutionStatus | None = None,
        track: Track | None = None,
        limit: int = 50,
        cursor: str | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> Page[ExecutionRecord]:
        """The owner's executions, newest first; a time without a zone is taken as UTC (the
        stores compare instants), and the cursor is only valid with the same filters."""
        return await self.executions.list(
            owner_id,
            flow_id,
            status,
            track,
            limit=limit,
            cursor=cursor,
            parent_id=parent_id,
            root_id=root_id,
            created_after=_as_utc(created_after),
            created_before=_as_utc(created_before),
        )

    async def tree(
        self,
        owner_id: str | None,
        execution_id: str,
        *,
        limit: int = MAX_PAGE_SIZE,
        cursor: str | None = None,
    ) -> ExecutionTree:
        """One page of the execution's subtree, with the status and size of all of it."""
        page, counts = await self.executions.tree_page(
            execution_id, owner_id, limit=limit, cursor=cursor
        )
        return ExecutionTree(
            root_id=execution_id,
            executions=page.items,
            tree_status=aggregate_status(counts.keys()),
            size=sum(counts.values()),
            next_cursor=page.next_cursor,
        )

    async def subscribe(
        self, owner_id: str | None, execution_id: str, from_index: int = 0
    ) -> AsyncIterator[Event]:
        """The execution's events from `from_index`, ending after the terminal event."""
        record = await self.executions.get(execution_id, owner_id)
        events = self.buses[record.events_backend].subscribe(record.id, from_index)
        if record.status.is_terminal:
            return events
        return self._row_before_ending(record.id, events)

    async def _row_before_ending(
        self, execution_id: str, events: AsyncIterator[Event]
    ) -> AsyncIterator[Event]:
        """Hold the terminal event until the row shows the ending: whoever writes an ending
        writes the event first (so a crash in between is repaired from the stream), and a
        subscriber that got it must find the row already terminal."""
        try:
            async for event in events:
                if event.type.is_terminal:
                    await self._await_terminal_row(execution_id)
                yield event
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    async def _await_terminal_row(self, execution_id: str) -> None:
        deadline = time.monotonic() + self.terminal_row_wait_s
        pause = 0.002
        while not (await self.executions.get(execution_id)).status.is_terminal:
            if time.monotonic() > deadline:
                # The writer died between the event and the row: recovery records the ending
                # from the stream later; the stream itself must not hang meanwhile.
                log.warning(
                    "terminal event delivered before the row recorded it",
                    execution_id=execution_id,
                    waited_s=self.terminal_row_wait_s,
                )
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)
