"""The stores the use cases need, in their own terms: what is kept, never how.

Each is a Protocol; adapters/postgres implements them on PostgreSQL, adapters/memory in memory
for the use-case unit tests, and both honour the contracts written here. A use case that must
change several things as one step (publish an event and move the status; give up and end the
claim) gets a `LockedExecution`: everything done through it commits together, or not at all.

Errors are the ones of core/errors.py and domain: NotFound (missing, or another owner's: the
two look the same), AlreadyExists, IllegalTransition / UnexpectedStatus, LimitExceeded,
InvalidCursor, and ValueError for a page size outside 1..MAX_PAGE_SIZE.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from twintrack.core.records import (
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
from twintrack.domain.execution import (
    EventsBackend,
    ExecutionOptions,
    ExecutionStatus,
    Track,
    TriggerEvent,
)
from twintrack.domain.limits import OwnerLimits

#: The statuses of an execution a worker holds: what a claimed writer expects by default.
ACTIVE = (ExecutionStatus.RUNNING, ExecutionStatus.PAUSED)


class LockedExecution(Protocol):
    """One execution under its row lock, for one transaction."""

    record: ExecutionRecord

    async def transition(
        self,
        target: ExecutionStatus,
        *,
        outputs: dict[str, Any] | None = None,
        error_message: str | None = None,
        error_node_id: str | None = None,
        next_event_index: int | None = None,
    ) -> ExecutionRecord:
        """Move the status (the state machine decides; IllegalTransition otherwise)."""
        ...

    async def remember_trace(self, traceparent: str) -> None:
        """Keep the trace the execution belongs to, for the worker that will run it."""
        ...

    async def admit_running(self, cap: int) -> int:
        """How many of the owner's running slots are taken without this execution (its
        started, unfinished executions, and other starts admitted and not yet committed);
        when fewer than `cap`, one is taken for this start, atomically with the count.

        The taken slot counts for every other start of the owner until this transaction
        commits the move out of `created` (then the execution counts as running), or ends
        without it (the slot is given back). So `cap` is never passed, whichever process
        starts, and an owner's starts do not wait for each other's publish. TimeoutError
        when the owner's count could not be taken within a bounded wait.
        """
        ...


class ExecutionStore(Protocol):
    """Executions, the one source of truth both tracks read and write.

    Every status change follows `domain.execution.ALLOWED_TRANSITIONS`, atomically: of two
    racing writers exactly one moves an execution out of a status, the other gets
    IllegalTransition. `owner_id`, where taken, scopes the call to that owner's executions,
    and shadow runs (`shadow_of` set) are never among an owner's: they are invisible to the
    owner's lists, reads and streams.
    """

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
        """A new execution in `created` (a shadow run of `shadow_of` when given;
        `fallback_reason`: why it is on Kafka although the rollout routed it to DBOS). A child
        takes root and depth from its parent (same owner, else NotFound); the flow version
        must exist (NotFound); a taken `execution_id` is AlreadyExists, so a retried spawn
        reads the child instead of making a second one; with `limits`, a child that would
        pass MAX_EXECUTIONS_PER_TREE is LimitExceeded and not created, however many spawns
        race."""
        ...

    async def get(self, execution_id: str, owner_id: str | None = None) -> ExecutionRecord: ...

    async def fall_back(self, execution_id: str, reason: str) -> ExecutionRecord:
        """Move an execution still `created` to the Kafka track with Kafka events, keeping
        `reason` as its `fallback_reason`: for a create whose DBOS admission failed before
        anything was announced. UnexpectedStatus when it is no longer `created`."""
        ...

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
        """The owner's executions, newest first, each exactly once across pages (with the
        same filters). `parent_id`: its direct children; `root_id`: every execution of that
        tree, the root included; `created_after` <= created_at < `created_before` (aware
        datetimes), a half-open range so adjacent windows never count a row twice."""
        ...

    async def children(
        self, parent_id: str, owner_id: str | None = None
    ) -> builtins.list[ExecutionRecord]:
        """Direct children, oldest first."""
        ...

    async def tree(
        self, execution_id: str, owner_id: str | None = None
    ) -> builtins.list[ExecutionRecord]:
        """The execution and all its descendants, by depth then age; NotFound if not visible."""
        ...

    async def tree_page(
        self,
        execution_id: str,
        owner_id: str | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[Page[ExecutionRecord], dict[ExecutionStatus, int]]:
        """One page of the subtree (by depth, age, id) and the whole subtree's count by status,
        read from one snapshot; a member added while a client pages lands after its page."""
        ...

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
        """Move to `target` atomically. UnexpectedStatus when the status is not in `expected`.
        `queued_at`/`started_at` keep the first time, `finished_at` is set by a terminal move,
        `attempt` counts moves from `queued` to `running`, `next_event_index` never goes down."""
        ...

    def locked(
        self, execution_id: str, owner_id: str | None = None
    ) -> AbstractAsyncContextManager[LockedExecution]:
        """Hold the execution's lock for one transaction, committed when the block ends
        normally: writers that publish an event and move the status do both under it, so they
        never interleave. Other writers of the execution wait for it."""
        ...

    async def advance_event_index(self, execution_id: str, next_index: int) -> int:
        """Raise `next_event_index` to at least `next_index` (idempotent); return its value."""
        ...

    async def stop_reason(self, execution_id: str) -> str | None:
        """Why the execution is being stopped: its first `stop` command's reason (or
        "stopped"), or its ending once stopped; None while nobody asked it to stop. A running
        execution told to stop stays `running` until its engine obeys, so the status alone
        cannot tell; a spawn asks this once its child exists, so no child escapes a stop."""
        ...

    async def finished_among(self, execution_ids: Collection[str]) -> set[str]:
        """Which of these executions have ended (any owner's): one read for every long-poll
        of a process."""
        ...

    async def reserve_key(
        self, owner_id: str, key: str, request_hash: str, execution_id: str, ttl_s: float
    ) -> KeyReservation:
        """Take the owner's idempotency `key` for `execution_id` (reserved), unless a request
        took it within `ttl_s`: then that request's execution id and fingerprint. Of any
        number of concurrent callers with one key exactly one reserves it; an expired key is
        taken over. The execution need not exist yet (it is created under the id after)."""
        ...

    async def release_key(self, owner_id: str, key: str, execution_id: str) -> None:
        """Free the key if it still names `execution_id` and that execution does not exist."""
        ...


class FlowStore(Protocol):
    """Flows and their immutable versions, per owner: an update appends version N+1, so an
    execution that pinned version N keeps exactly what it started with."""

    async def create(self, owner_id: str, name: str, definition: dict[str, Any]) -> FlowRef: ...

    async def update(
        self, owner_id: str, flow_id: str, name: str, definition: dict[str, Any]
    ) -> int:
        """Append the next version (concurrent updates each get their own number)."""
        ...

    async def get(self, owner_id: str, flow_id: str, version: int | None = None) -> FlowRecord:
        """A version of the flow (the latest when `version` is None); NotFound otherwise."""
        ...

    async def list(
        self, owner_id: str, limit: int = 50, cursor: str | None = None
    ) -> Page[FlowSummary]:
        """The owner's flows, newest first."""
        ...


class KeyStore(Protocol):
    """API keys: the secret is returned once, at creation, and never stored."""

    async def create(self, owner_id: str, admin: bool = False) -> CreatedApiKey: ...

    async def authenticate_key(self, key: str) -> Principal | None:
        """The key's owner and admin flag; None for an unknown or revoked key."""
        ...

    async def authenticate(self, key: str) -> str | None: ...

    async def revoke(self, owner_id: str, key_id: str) -> None:
        """Idempotent; NotFound for a key that is not the owner's."""
        ...

    async def list(self, owner_id: str) -> builtins.list[ApiKeyRecord]:
        """The owner's keys, oldest first, revoked ones included."""
        ...


class CounterStore(Protocol):
    """Durable counters behind the `tally` node (satisfies `nodes.base.Counters`): a keyed
    increment counts once however often it is retried, and returns the first try's count."""

    async def increment(self, name: str, *, key: str | None = None) -> int: ...

    async def get(self, name: str) -> int:
        """The current count; 0 for a counter never incremented."""
        ...


class WorkerRegistry(Protocol):
    """Every worker process, the tracks it serves and its last heartbeat: the sweeper finds the
    ones that went silent or stopped with work left."""

    async def register(self, worker_id: str, tracks: Sequence[str]) -> None: ...

    async def heartbeat(self, worker_id: str) -> None: ...

    async def stopped(self, worker_id: str) -> None: ...

    async def gone(
        self, silent_s: float, *, track: str, within_s: float = 3600
    ) -> builtins.list[str]:
        """Workers of `track` that stopped, or went silent for `silent_s`, within `within_s`."""
        ...

    async def silent_since(self, seconds: float) -> builtins.list[tuple[str, datetime]]:
        """Workers not stopped cleanly whose last heartbeat is older than `seconds`."""
        ...


class ClaimStore(Protocol):
    """Which worker runs an execution, until when, under which fencing generation.

    Every claim of an execution bumps its generation, and every write a worker makes for it is
    conditional on still holding (worker, generation): a worker that lost its lease can no
    longer write. Generations only grow; a release just ends the lease.
    """

    async def claim(
        self,
        execution_id: str,
        worker_id: str,
        ttl_s: float,
        *,
        track: Track,
        takeover: bool = False,
    ) -> tuple[Claim, ExecutionRecord] | None:
        """Lease a `queued` execution of `track` and move it to `running` (one more attempt).
        With `takeover`, a `running`/`paused` one whose lease ran out is taken as a new attempt.
        None when there is nothing to take (not queued, another track, a live lease elsewhere);
        NotFound for an unknown execution."""
        ...

    async def renew(
        self, worker_id: str, held: Sequence[tuple[str, int]], ttl_s: float
    ) -> set[str]:
        """Extend the leases (execution id, generation) this worker still holds; returns the
        ids kept."""
        ...

    async def transition(
        self,
        claim: Claim,
        target: ExecutionStatus,
        *,
        expected: Collection[ExecutionStatus] = ACTIVE,
        release: bool = False,
        **fields: Any,
    ) -> ExecutionRecord | None:
        """A fenced status move (fields as `ExecutionStore.transition`), ending the lease with
        `release`: None when this worker no longer holds the claim."""
        ...

    async def hand_back(self, claim: Claim) -> ExecutionRecord | None:
        """Give an unfinished run back (its worker is shutting down), fenced: `queued` again,
        lease released and a `handover` audit row, in one commit, so the next run does not
        count as a failed attempt. None when the claim is no longer this worker's."""
        ...

    async def held_by(self, worker_id: str) -> builtins.list[str]:
        """Executions whose claim names this worker."""
        ...

    async def expire_now(self, execution_id: str) -> None:
        """Make a lease run out at once (operators and tests: a silent worker)."""
        ...
