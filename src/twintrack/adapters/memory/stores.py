"""In-memory stores: every port of core/stores.py, honouring the same contracts as Postgres.

For unit tests of the use cases, with no server: the state machine of
`domain.execution.ALLOWED_TRANSITIONS`, the same errors (NotFound for another owner's row,
AlreadyExists, IllegalTransition / UnexpectedStatus, LimitExceeded for a full tree), keyset
pages, fenced claims with generations. Concurrency is the event loop's: a method that does not
await is atomic, and `locked()` holds a per-execution asyncio.Lock that every other writer of
that execution waits for (as a Postgres row lock), plus the owner's lock once it counted the
owner's running executions. What is done through a `LockedExecution` is applied when the block
ends normally, and dropped if it raises.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from twintrack.adapters.memory.tracks import MemoryCommandChannel
from twintrack.core.errors import AlreadyExists, InvalidCursor, NotFound, UnexpectedStatus
from twintrack.core.records import (
    MAX_PAGE_SIZE,
    ApiKeyRecord,
    Claim,
    CreatedApiKey,
    ExecutionRecord,
    FlowRecord,
    FlowRef,
    FlowSummary,
    KeyReservation,
    Page,
    Principal,
)
from twintrack.core.stores import ACTIVE
from twintrack.domain.attempts import HANDOVER
from twintrack.domain.commands import Command
from twintrack.domain.execution import (
    ALLOWED_TRANSITIONS,
    EventsBackend,
    ExecutionOptions,
    ExecutionStatus,
    IllegalTransition,
    Track,
    TriggerEvent,
)
from twintrack.domain.ids import (
    KEY_PREFIX,
    hash_key,
    new_api_key_id,
    new_api_key_secret,
    new_execution_id,
    new_flow_id,
)
from twintrack.domain.limits import RUNNING_STATUSES, OwnerLimits

_S = ExecutionStatus
RELEASED = ""  # worker_id of a claim nobody holds, as in Postgres
OWNER_LOCK_WAIT_S = 5.0

_last_now = datetime.min.replace(tzinfo=UTC)


def _now() -> datetime:
    """Strictly increasing, so "newest first" is a total order even within one microsecond."""
    global _last_now
    now = datetime.now(UTC)
    _last_now = now if now > _last_now else _last_now + timedelta(microseconds=1)
    return _last_now


# -- cursors ------------------------------------------------------------------------------------


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    return limit


def _encode(key: Sequence[Any]) -> str:
    raw = [k.isoformat() if isinstance(k, datetime) else k for k in key]
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


def _decode(cursor: str, shape: tuple[type, ...]) -> tuple[Any, ...]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or len(raw) != len(shape):
            raise ValueError(cursor)
        key = tuple(
            datetime.fromisoformat(v) if t is datetime else v
            for v, t in zip(raw, shape, strict=True)
        )
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidCursor(f"invalid cursor {cursor!r}") from exc
    if not all(isinstance(v, t) for v, t in zip(key, shape, strict=True)):
        raise InvalidCursor(f"invalid cursor {cursor!r}")
    return key


def _newest_first(
    items: Iterable[Any], limit: int, cursor: str | None
) -> tuple[builtins.list[Any], str | None]:
    """Keyset page on (created_at, id), newest first: each item once across pages."""
    _check_limit(limit)
    ordered = sorted(items, key=lambda r: (r.created_at, r.id), reverse=True)
    if cursor is not None:
        after = _decode(cursor, (datetime, str))
        ordered = [r for r in ordered if (r.created_at, r.id) < after]
    kept = ordered[:limit]
    more = len(ordered) > limit
    return kept, _encode((kept[-1].created_at, kept[-1].id)) if more else None


# -- executions ---------------------------------------------------------------------------------


def _moved(
    record: ExecutionRecord,
    target: ExecutionStatus,
    *,
    expected: Collection[ExecutionStatus] | None = None,
    outputs: dict[str, Any] | None = None,
    error_message: str | None = None,
    error_node_id: str | None = None,
    next_event_index: int | None = None,
) -> ExecutionRecord:
    """The record after the move, or the refusal Postgres would give."""
    current = record.status
    if target not in ALLOWED_TRANSITIONS[current] or (
        expected is not None and current not in expected
    ):
        if expected is not None and current not in expected:
            raise UnexpectedStatus(record.id, current, target, frozenset(expected))
        raise IllegalTransition(record.id, current, target)
    now = _now()
    values: dict[str, Any] = {"status": target, "updated_at": now}
    if target is _S.QUEUED:
        values["queued_at"] = record.queued_at or now
    if target is _S.RUNNING:
        values["started_at"] = record.started_at or now
        if current is _S.QUEUED:
            values["attempt"] = record.attempt + 1
    if target.is_terminal:
        values["finished_at"] = now
    if outputs is not None:
        values["outputs"] = outputs
    if error_message is not None:
        values["error_message"] = error_message
    if error_node_id is not None:
        values["error_node_id"] = error_node_id
    if next_event_index is not None:
        values["next_event_index"] = max(record.next_event_index, next_event_index)
    return record.model_copy(update=values)


class MemoryLockedExecution:
    """One execution under its lock (`MemoryExecutionStore.locked`); moves are staged here and
    applied when the block ends normally."""

    def __init__(self, store: MemoryExecutionStore, record: ExecutionRecord) -> None:
        self._store = store
        self.record = record
        self._owner_lock: asyncio.Lock | None = None
        #: what other memory stores staged in this "transaction", applied with the record
        self.on_commit: list[Callable[[], None]] = []

    async def transition(
        self,
        target: ExecutionStatus,
        *,
        outputs: dict[str, Any] | None = None,
        error_message: str | None = None,
        error_node_id: str | None = None,
        next_event_index: int | None = None,
    ) -> ExecutionRecord:
        self.record = _moved(
            self.record,
            target,
            outputs=outputs,
            error_message=error_message,
            error_node_id=error_node_id,
            next_event_index=next_event_index,
        )
        return self.record

    async def remember_trace(self, traceparent: str) -> None:
        self.record = self.record.model_copy(update={"traceparent": traceparent})

    async def admit_running(self, cap: int, *, wait_s: float = OWNER_LOCK_WAIT_S) -> int:
        """Counted under the owner's lock, held until the block ends: of two concurrent starts
        the second counts the first (one process: holding the lock is the admission)."""
        owner_id = self.record.owner_id
        if self._owner_lock is None:
            lock = self._store._owner_locks[owner_id]
            try:
                async with asyncio.timeout(wait_s):
                    await lock.acquire()
            except TimeoutError:
                raise TimeoutError(
                    f"another start of owner {owner_id} has held its running count for {wait_s:g}s"
                ) from None
            self._owner_lock = lock
        return self._store.running_count(owner_id)

    def _release(self) -> None:
        if self._owner_lock is not None:
            self._owner_lock.release()
            self._owner_lock = None


class MemoryExecutionStore:
    """`core.stores.ExecutionStore` in a dict. With `flows`, a pinned flow version must exist;
    with `commands`, `stop_reason` reads their stored `stop` commands (as Postgres joins them)."""

    def __init__(
        self,
        flows: MemoryFlowStore | None = None,
        commands: MemoryCommandChannel | None = None,
    ) -> None:
        self.flows = flows
        self.commands = commands
        self.records: dict[str, ExecutionRecord] = {}
        # (owner, key) -> (execution id, request fingerprint, when taken)
        self.keys: dict[tuple[str, str], tuple[str, str, datetime]] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._owner_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def _visible(self, execution_id: str, owner_id: str | None) -> ExecutionRecord:
        record = self.records.get(execution_id)
        if record is None or (
            owner_id is not None and (record.owner_id != owner_id or record.shadow_of is not None)
        ):
            raise NotFound("execution", execution_id)
        return record

    async def create(
        self,
        *,
        owner_id: str,
        flow_id: str,
        flow_version: int,
        track: Track,
        events_backend: EventsBackend,
        options: ExecutionOptions | None = None,
        trigger_events: Iterable[TriggerEvent] = (),
        parent_id: str | None = None,
        execution_id: str | None = None,
        next_event_index: int = 0,
        limits: OwnerLimits | None = None,
        shadow_of: str | None = None,
        fallback_reason: str | None = None,
    ) -> ExecutionRecord:
        execution_id = execution_id or new_execution_id()
        root_id, depth = execution_id, 0
        if parent_id is not None:
            parent = self._visible(parent_id, owner_id)
            root_id, depth = parent.root_id, parent.depth + 1
        if execution_id in self.records:
            raise AlreadyExists("execution", execution_id)
        if self.flows is not None and not self.flows.has_version(flow_id, flow_version):
            raise NotFound("flow version", (flow_id, flow_version))
        if parent_id is not None and limits is not None:
            size = sum(1 for r in self.records.values() if r.root_id == root_id)
            limits.check_tree(size + 1, root_id)
        now = _now()
        record = ExecutionRecord(
            id=execution_id,
            root_id=root_id,
            parent_id=parent_id,
            depth=depth,
            owner_id=owner_id,
            flow_id=flow_id,
            flow_version=flow_version,
            track=track,
            events_backend=events_backend,
            status=_S.CREATED,
            options=options or ExecutionOptions(),
            trigger_events=tuple(trigger_events),
            outputs={},
            error_message=None,
            error_node_id=None,
            attempt=0,
            next_event_index=next_event_index,
            shadow_of=shadow_of,
            fallback_reason=fallback_reason,
            created_at=now,
            queued_at=None,
            started_at=None,
            finished_at=None,
            updated_at=now,
        )
        self.records[execution_id] = record
        return record

    def running_count(self, owner_id: str) -> int:
        return sum(
            1
            for r in self.records.values()
            if r.owner_id == owner_id and r.status in RUNNING_STATUSES and r.shadow_of is None
        )

    async def fall_back(self, execution_id: str, reason: str) -> ExecutionRecord:
        record = self._visible(execution_id, None)
        if record.status is not _S.CREATED:
            raise UnexpectedStatus(execution_id, record.status, _S.CREATED, frozenset([_S.CREATED]))
        moved = record.model_copy(
            update={
                "track": Track.KAFKA,
                "events_backend": EventsBackend.KAFKA,
                "fallback_reason": reason,
                "updated_at": _now(),
            }
        )
        self.records[execution_id] = moved
        return moved

    async def get(self, execution_id: str, owner_id: str | None = None) -> ExecutionRecord:
        return self._visible(execution_id, owner_id)

    async def list(
        self,
        owner_id: str,
        flow_id: str | None = None,
        status: ExecutionStatus | None = None,
        track: Track | None = None,
        limit: int = 50,
        cursor: str | None = None,
        *,
        parent_id: str | None = None,
        root_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> Page[ExecutionRecord]:
        matching = [
            r
            for r in self.records.values()
            if r.owner_id == owner_id
            and r.shadow_of is None
            and (flow_id is None or r.flow_id == flow_id)
            and (status is None or r.status is status)
            and (track is None or r.track is track)
            and (parent_id is None or r.parent_id == parent_id)
            and (root_id is None or r.root_id == root_id)
            and (created_after is None or r.created_at >= created_after)
            and (created_before is None or r.created_at < created_before)
        ]
        items, next_cursor = _newest_first(matching, limit, cursor)
        return Page(items=items, next_cursor=next_cursor)

    async def children(
        self, parent_id: str, owner_id: str | None = None
    ) -> builtins.list[ExecutionRecord]:
        found = [
            r
            for r in self.records.values()
            if r.parent_id == parent_id and (owner_id is None or r.owner_id == owner_id)
        ]
        return sorted(found, key=lambda r: (r.created_at, r.id))

    def _subtree(self, execution_id: str, owner_id: str | None) -> builtins.list[ExecutionRecord]:
        members = [self._visible(execution_id, owner_id)]
        by_parent: defaultdict[str, builtins.list[ExecutionRecord]] = defaultdict(list)
        for r in self.records.values():
            if r.parent_id is not None:
                by_parent[r.parent_id].append(r)
        for member in members:  # grows while it is walked: breadth first
            members.extend(by_parent.get(member.id, ()))
        return sorted(members, key=lambda r: (r.depth, r.created_at, r.id))

    async def tree(
        self, execution_id: str, owner_id: str | None = None
    ) -> builtins.list[ExecutionRecord]:
        return self._subtree(execution_id, owner_id)

    async def tree_page(
        self,
        execution_id: str,
        owner_id: str | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[Page[ExecutionRecord], dict[ExecutionStatus, int]]:
        _check_limit(limit)
        members = self._subtree(execution_id, owner_id)
        counts: dict[ExecutionStatus, int] = {}
        for m in members:
            counts[m.status] = counts.get(m.status, 0) + 1
        if cursor is not None:
            after = _decode(cursor, (int, datetime, str))
            members = [m for m in members if (m.depth, m.created_at, m.id) > after]
        kept = members[:limit]
        next_cursor = (
            _encode((kept[-1].depth, kept[-1].created_at, kept[-1].id))
            if len(members) > limit
            else None
        )
        return Page(items=kept, next_cursor=next_cursor), counts

    async def transition(
        self,
        execution_id: str,
        target: ExecutionStatus,
        *,
        expected: Collection[ExecutionStatus] | None = None,
        owner_id: str | None = None,
        outputs: dict[str, Any] | None = None,
        error_message: str | None = None,
        error_node_id: str | None = None,
        next_event_index: int | None = None,
    ) -> ExecutionRecord:
        self._visible(execution_id, owner_id)
        async with self._locks[execution_id]:
            record = _moved(
                self._visible(execution_id, owner_id),
                target,
                expected=expected,
                outputs=outputs,
                error_message=error_message,
                error_node_id=error_node_id,
                next_event_index=next_event_index,
            )
            self.records[execution_id] = record
        return record

    @asynccontextmanager
    async def locked(
        self, execution_id: str, owner_id: str | None = None
    ) -> AsyncIterator[MemoryLockedExecution]:
        self._visible(execution_id, owner_id)
        async with self._locks[execution_id]:
            handle = MemoryLockedExecution(self, self._visible(execution_id, owner_id))
            try:
                yield handle
            except BaseException:
                handle._release()
                raise
            self.records[execution_id] = handle.record
            for apply in handle.on_commit:
                apply()
            handle._release()

    async def advance_event_index(self, execution_id: str, next_index: int) -> int:
        self._visible(execution_id, None)
        async with self._locks[execution_id]:
            record = self._visible(execution_id, None)
            value = max(record.next_event_index, next_index)
            self.records[execution_id] = record.model_copy(
                update={"next_event_index": value, "updated_at": _now()}
            )
        return value

    async def stop_reason(self, execution_id: str) -> str | None:
        record = self.records.get(execution_id)
        if record is None:
            return None
        if self.commands is not None:
            for message in self.commands.commands:
                if message.execution_id == execution_id and message.command is Command.STOP:
                    return message.reason or "stopped"
        if record.status is _S.STOPPED:
            return record.error_message or "stopped"
        return None

    async def finished_among(self, execution_ids: Collection[str]) -> set[str]:
        return {
            i for i in execution_ids if i in self.records and self.records[i].status.is_terminal
        }

    async def reserve_key(
        self, owner_id: str, key: str, request_hash: str, execution_id: str, ttl_s: float
    ) -> KeyReservation:
        now = _now()
        held = self.keys.get((owner_id, key))
        if held is not None and held[2] >= now - timedelta(seconds=ttl_s):
            return KeyReservation(held[0], held[1], reserved=False)
        self.keys[(owner_id, key)] = (execution_id, request_hash, now)
        return KeyReservation(execution_id, request_hash, reserved=True)

    async def release_key(self, owner_id: str, key: str, execution_id: str) -> None:
        held = self.keys.get((owner_id, key))
        if held is not None and held[0] == execution_id and execution_id not in self.records:
            del self.keys[(owner_id, key)]


# -- flows, keys, counters, workers -------------------------------------------------------------


@dataclass
class _Flow:
    summary: FlowSummary
    versions: dict[int, tuple[str, dict[str, Any], datetime]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.summary.id

    @property
    def created_at(self) -> datetime:
        return self.summary.created_at


class MemoryFlowStore:
    """`core.stores.FlowStore`: versions are appended, never rewritten."""

    def __init__(self) -> None:
        self._flows: dict[str, _Flow] = {}

    def has_version(self, flow_id: str, version: int) -> bool:
        flow = self._flows.get(flow_id)
        return flow is not None and version in flow.versions

    async def create(self, owner_id: str, name: str, definition: dict[str, Any]) -> FlowRef:
        now = _now()
        flow_id = new_flow_id()
        summary = FlowSummary(
            id=flow_id,
            owner_id=owner_id,
            name=name,
            latest_version=1,
            created_at=now,
            updated_at=now,
        )
        self._flows[flow_id] = _Flow(summary, {1: (name, definition, now)})
        return FlowRef(flow_id, 1)

    def _owned(self, owner_id: str, flow_id: str) -> _Flow | None:
        flow = self._flows.get(flow_id)
        return flow if flow is not None and flow.summary.owner_id == owner_id else None

    async def update(
        self, owner_id: str, flow_id: str, name: str, definition: dict[str, Any]
    ) -> int:
        flow = self._owned(owner_id, flow_id)
        if flow is None:
            raise NotFound("flow", flow_id)
        now = _now()
        version = flow.summary.latest_version + 1
        flow.versions[version] = (name, definition, now)
        flow.summary = flow.summary.model_copy(
            update={"latest_version": version, "name": name, "updated_at": now}
        )
        return version

    async def get(self, owner_id: str, flow_id: str, version: int | None = None) -> FlowRecord:
        flow = self._owned(owner_id, flow_id)
        wanted = version if version is not None or flow is None else flow.summary.latest_version
        if flow is None or wanted not in flow.versions:
            raise NotFound("flow" if version is None else "flow version", (flow_id, version))
        name, definition, created_at = flow.versions[wanted]
        return FlowRecord(
            **flow.summary.model_dump(exclude={"name"}),
            name=name,
            version=wanted,
            definition=definition,
            version_created_at=created_at,
        )

    async def list(
        self, owner_id: str, limit: int = 50, cursor: str | None = None
    ) -> Page[FlowSummary]:
        mine = [f for f in self._flows.values() if f.summary.owner_id == owner_id]
        kept, next_cursor = _newest_first(mine, limit, cursor)
        return Page(items=[f.summary for f in kept], next_cursor=next_cursor)


class MemoryKeyStore:
    """`core.stores.KeyStore`: only each key's hash is kept, as in Postgres."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[ApiKeyRecord, str]] = {}

    async def create(self, owner_id: str, admin: bool = False) -> CreatedApiKey:
        key, prefix = new_api_key_secret()
        record = ApiKeyRecord(
            id=new_api_key_id(),
            owner_id=owner_id,
            prefix=prefix,
            is_admin=admin,
            created_at=_now(),
            revoked_at=None,
        )
        self._keys[record.id] = (record, hash_key(key))
        return CreatedApiKey(**record.model_dump(), key=key)

    async def authenticate_key(self, key: str) -> Principal | None:
        if not key.startswith(KEY_PREFIX):
            return None
        digest = hash_key(key)
        for record, stored in self._keys.values():
            if stored == digest and record.revoked_at is None:
                return Principal(owner_id=record.owner_id, is_admin=record.is_admin)
        return None

    async def authenticate(self, key: str) -> str | None:
        principal = await self.authenticate_key(key)
        return None if principal is None else principal.owner_id

    async def revoke(self, owner_id: str, key_id: str) -> None:
        found = self._keys.get(key_id)
        if found is None or found[0].owner_id != owner_id:
            raise NotFound("api key", key_id)
        record, digest = found
        if record.revoked_at is None:
            self._keys[key_id] = (record.model_copy(update={"revoked_at": _now()}), digest)

    async def list(self, owner_id: str) -> builtins.list[ApiKeyRecord]:
        mine = [r for r, _ in self._keys.values() if r.owner_id == owner_id]
        return sorted(mine, key=lambda r: (r.created_at, r.id))


class MemoryCounterStore:
    """`core.stores.CounterStore`: a keyed increment counts once and repeats its count."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._keyed: dict[str, int] = {}

    async def increment(self, name: str, *, key: str | None = None) -> int:
        if key is not None and key in self._keyed:
            return self._keyed[key]
        count = self.counts[name] = self.counts.get(name, 0) + 1
        if key is not None:
            self._keyed[key] = count
        return count

    async def get(self, name: str) -> int:
        return self.counts.get(name, 0)


@dataclass
class _Worker:
    tracks: list[str]
    heartbeat_at: datetime
    stopped_at: datetime | None = None


class MemoryWorkerRegistry:
    """`core.stores.WorkerRegistry` in a dict."""

    def __init__(self) -> None:
        self.workers: dict[str, _Worker] = {}

    async def register(self, worker_id: str, tracks: Sequence[str]) -> None:
        self.workers[worker_id] = _Worker(list(tracks), _now())

    async def heartbeat(self, worker_id: str) -> None:
        if worker_id in self.workers:
            self.workers[worker_id].heartbeat_at = _now()

    async def stopped(self, worker_id: str) -> None:
        if worker_id in self.workers:
            self.workers[worker_id].stopped_at = _now()

    async def gone(
        self, silent_s: float, *, track: str, within_s: float = 3600
    ) -> builtins.list[str]:
        now = _now()
        return [
            worker_id
            for worker_id, w in self.workers.items()
            if track in w.tracks
            and w.heartbeat_at > now - timedelta(seconds=within_s)
            and (w.stopped_at is not None or w.heartbeat_at < now - timedelta(seconds=silent_s))
        ]

    async def silent_since(self, seconds: float) -> builtins.list[tuple[str, datetime]]:
        cutoff = _now() - timedelta(seconds=seconds)
        return [
            (worker_id, w.heartbeat_at)
            for worker_id, w in self.workers.items()
            if w.stopped_at is None and w.heartbeat_at < cutoff
        ]


# -- claims -------------------------------------------------------------------------------------


@dataclass
class _Lease:
    worker_id: str
    generation: int
    expires_at: datetime


@dataclass(frozen=True)
class RecoveryAudit:
    """What Postgres writes to `execution_recoveries`, kept for tests to assert on."""

    execution_id: str
    track: Track
    reason: str
    previous_worker_id: str | None
    attempt: int
    detail: str | None = None


class MemoryClaimStore:
    """`core.stores.ClaimStore` over a `MemoryExecutionStore`: each call that moves a status
    holds the execution's lock, as the Postgres one holds its row lock."""

    def __init__(self, executions: MemoryExecutionStore) -> None:
        self._executions = executions
        self.leases: dict[str, _Lease] = {}
        self.recoveries: list[RecoveryAudit] = []

    async def claim(
        self,
        execution_id: str,
        worker_id: str,
        ttl_s: float,
        *,
        track: Track,
        takeover: bool = False,
    ) -> tuple[Claim, ExecutionRecord] | None:
        store = self._executions
        store._visible(execution_id, None)
        async with store._locks[execution_id]:
            record = store._visible(execution_id, None)
            takeable = {_S.QUEUED, *ACTIVE} if takeover else {_S.QUEUED}
            if record.track is not track or record.status not in takeable:
                return None
            now = _now()
            lease = self.leases.get(execution_id)
            if lease is not None and not (
                lease.worker_id in (RELEASED, worker_id) or lease.expires_at < now
            ):
                return None
            if record.status is not _S.QUEUED:
                # A new attempt of an execution whose worker is gone: back through `queued`,
                # so the move to `running` counts the attempt like any other delivery.
                record = _moved(record, _S.QUEUED, expected=ACTIVE)
            record = _moved(record, _S.RUNNING, expected={_S.QUEUED})
            generation = 1 if lease is None else lease.generation + 1
            lease = _Lease(worker_id, generation, now + timedelta(seconds=ttl_s))
            self.leases[execution_id] = lease
            store.records[execution_id] = record
        return Claim(execution_id, worker_id, generation, lease.expires_at), record

    async def renew(
        self, worker_id: str, held: Sequence[tuple[str, int]], ttl_s: float
    ) -> set[str]:
        kept: set[str] = set()
        expires_at = _now() + timedelta(seconds=ttl_s)
        for execution_id, generation in held:
            lease = self.leases.get(execution_id)
            if lease is not None and (lease.worker_id, lease.generation) == (worker_id, generation):
                lease.expires_at = expires_at
                kept.add(execution_id)
        return kept

    def _holds(self, claim: Claim) -> bool:
        lease = self.leases.get(claim.execution_id)
        return lease is not None and (lease.worker_id, lease.generation) == (
            claim.worker_id,
            claim.generation,
        )

    def _release(self, execution_id: str) -> None:
        lease = self.leases[execution_id]
        lease.worker_id, lease.expires_at = RELEASED, _now()

    async def transition(
        self,
        claim: Claim,
        target: ExecutionStatus,
        *,
        expected: Collection[ExecutionStatus] = ACTIVE,
        release: bool = False,
        **fields: Any,
    ) -> ExecutionRecord | None:
        store = self._executions
        async with store._locks[claim.execution_id]:
            if not self._holds(claim):
                return None
            record = _moved(
                store._visible(claim.execution_id, None), target, expected=expected, **fields
            )
            store.records[claim.execution_id] = record
            if release:
                self._release(claim.execution_id)
        return record

    async def hand_back(self, claim: Claim) -> ExecutionRecord | None:
        store = self._executions
        async with store._locks[claim.execution_id]:
            if not self._holds(claim):
                return None
            record = _moved(store._visible(claim.execution_id, None), _S.QUEUED, expected=ACTIVE)
            store.records[claim.execution_id] = record
            self._release(claim.execution_id)
            self.recoveries.append(
                RecoveryAudit(
                    execution_id=claim.execution_id,
                    track=record.track,
                    reason=HANDOVER,
                    previous_worker_id=claim.worker_id,
                    attempt=record.attempt,
                    detail=f"attempt {record.attempt} handed over by worker {claim.worker_id}, "
                    "which was shutting down",
                )
            )
        return record

    async def held_by(self, worker_id: str) -> builtins.list[str]:
        return [i for i, lease in self.leases.items() if lease.worker_id == worker_id]

    async def expire_now(self, execution_id: str) -> None:
        lease = self.leases.get(execution_id)
        if lease is not None:
            lease.expires_at = _now() - timedelta(seconds=1)


@dataclass
class MemoryStores:
    """One consistent set: the execution store checks flow versions in `flows`, reads stop
    commands from `commands`, and the claim store moves its executions."""

    commands: MemoryCommandChannel = field(default_factory=MemoryCommandChannel)
    flows: MemoryFlowStore = field(default_factory=MemoryFlowStore)
    keys: MemoryKeyStore = field(default_factory=MemoryKeyStore)
    counters: MemoryCounterStore = field(default_factory=MemoryCounterStore)
    workers: MemoryWorkerRegistry = field(default_factory=MemoryWorkerRegistry)
    executions: MemoryExecutionStore = field(init=False)
    claims: MemoryClaimStore = field(init=False)

    def __post_init__(self) -> None:
        self.executions = MemoryExecutionStore(self.flows, self.commands)
        self.claims = MemoryClaimStore(self.executions)
