"""Bulk actions by filter: stop, or reroute, every execution a filter matches — at most once each.

An operator cleaning up after an incident selects executions by track, status, flow, owner and
creation time, looks first (a dry run lists what would be acted on, changing nothing), then
acts. Each real run is an *operation* kept under its id (`bulk_operations`): every execution is
taken for the operation (a row of `bulk_operation_items`) before it is acted on, so however often
the request is sent again — a retry after a timeout, two at once — each execution is acted on at
most once, and a request with an operation id already finished answers the result it recorded
(per execution: what was done, or why not). A crash between taking an execution and recording
its outcome leaves it `pending`: not acted on again, and shown as such.

The actions are the existing rules, not new ones: a stop is the service's stop (the whole
tree, `ExecutionService.command(STOP)`), a reroute is core/rollout.py's move of one unstarted
execution (its row lock, audit row and hold-back rules). One operation acts on at most
BULK_MAX_IDS executions, read BULK_PAGE_SIZE at a time, oldest first; more matches are reported
as `truncated` and are left for another operation.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

import structlog

from twintrack.core.errors import NotFound
from twintrack.core.recovery_ports import HoldBack
from twintrack.core.rollout import (
    UNSTARTED,
    Failed,
    Moved,
    hold_back_rule,
    move_one,
    other_track,
)
from twintrack.core.service import Conflict, ExecutionService, TrackUnavailable
from twintrack.domain.commands import Command
from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.domain.ids import new_id

log = structlog.get_logger()

UNFINISHED = tuple(s for s in ExecutionStatus if not s.is_terminal)
DEFAULT_CONCURRENCY = 8


class BulkAction(StrEnum):
    STOP = "stop"
    REROUTE = "reroute"


class Outcome(StrEnum):
    """What happened to one execution of a bulk operation."""

    STOPPED = "stopped"
    MOVED = "moved"
    #: not acted on: it changed before its turn (finished, started, moved) or a rule holds it
    SKIPPED = "skipped"
    #: the action raised; nothing changed
    FAILED = "failed"
    #: taken by the operation, outcome never recorded (a crash, or a concurrent retry acting)
    PENDING = "pending"
    #: a dry run's answer
    WOULD_STOP = "would stop"
    WOULD_MOVE = "would move"


class InvalidBulkRequest(ValueError):
    """A filter or request that cannot select anything sensible (e.g. reroute to its own track)."""


class OperationIdReused(Exception):
    """An operation id sent again with a different request than the one it first came with."""

    def __init__(self, operation_id: str) -> None:
        super().__init__(
            f"operation {operation_id!r} was first sent with a different request; send that "
            "request again to read its result, or use a new operation id"
        )
        self.operation_id = operation_id


@dataclass(frozen=True)
class ExecutionFilter:
    """Which executions a bulk action selects (every field given must match; none: all)."""

    track: Track | None = None
    statuses: tuple[ExecutionStatus, ...] = ()
    flow_id: str | None = None
    owner_id: str | None = None
    #: created strictly before / at or after
    created_before: datetime | None = None
    created_after: datetime | None = None
    #: leave out what this reroute rule keeps back (set by a reroute, not by callers)
    excluding: HoldBack | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "track": None if self.track is None else self.track.value,
            "statuses": sorted(s.value for s in self.statuses),
            "flow_id": self.flow_id,
            "owner_id": self.owner_id,
            "created_before": None
            if self.created_before is None
            else self.created_before.isoformat(),
            "created_after": None if self.created_after is None else self.created_after.isoformat(),
            **({} if self.excluding is None else {"excluding": self.excluding.name.lower()}),
        }

    def matches(self, record: Any) -> bool:
        """For stores that filter in memory: `record` has the execution fields (`excluding`
        is left to the store, which knows the audit)."""
        return (
            (self.track is None or record.track is self.track)
            and (not self.statuses or record.status in self.statuses)
            and (self.flow_id is None or record.flow_id == self.flow_id)
            and (self.owner_id is None or record.owner_id == self.owner_id)
            and (self.created_before is None or record.created_at < self.created_before)
            and (self.created_after is None or record.created_at >= self.created_after)
        )


@dataclass(frozen=True)
class Candidate:
    execution_id: str
    created_at: datetime


@dataclass(frozen=True)
class ItemResult:
    outcome: Outcome
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome.value, "detail": self.detail}


@dataclass(frozen=True)
class OperationRecord:
    """A bulk operation as stored: its request and what it did so far, by execution id."""

    id: str
    action: BulkAction
    request_hash: str
    request: dict[str, Any]
    results: dict[str, ItemResult] = field(default_factory=dict)
    finished: bool = False
    truncated: bool = False
    #: whether `begin` made it now (False: it existed already)
    created: bool = True


@dataclass(frozen=True)
class BulkResult:
    operation_id: str | None
    action: BulkAction
    dry_run: bool
    #: the operation id was seen before: this answer is (or continues) what it recorded
    replayed: bool
    #: more executions matched than one operation acts on (BULK_MAX_IDS)
    truncated: bool
    results: dict[str, ItemResult]
    request: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(r.outcome.value for r in self.results.values()))

    def to_json(self) -> dict[str, Any]:
        return {
            "operation_id": self.operation_id,
            "action": self.action.value,
            "dry_run": self.dry_run,
            "replayed": self.replayed,
            "truncated": self.truncated,
            "request": self.request,
            "counts": self.counts,
            "results": {i: r.to_json() for i, r in self.results.items()},
        }


class BulkStore(Protocol):
    """The executions a filter matches, and the operations kept by id (adapters/*/bulk.py)."""

    async def matching(
        self, where: ExecutionFilter, *, after: Candidate | None, limit: int
    ) -> list[Candidate]:
        """Up to `limit` matches, oldest first (created_at, id), strictly after `after`."""
        ...

    async def begin(
        self,
        operation_id: str,
        action: BulkAction,
        request_hash: str,
        request: dict[str, Any],
        requested_by: str,
    ) -> OperationRecord:
        """Record a new operation, or return the one already recorded under the id (of any
        request: the caller compares `request_hash`), with the results it has so far."""
        ...

    async def take(self, operation_id: str, execution_ids: list[str]) -> list[str]:
        """Take the executions for the operation (`pending`): those it had not taken yet, in
        order. Of concurrent takers of one id exactly one gets it."""
        ...

    async def settle(self, operation_id: str, execution_id: str, result: ItemResult) -> None: ...

    async def finish(self, operation_id: str, *, truncated: bool) -> None: ...

    async def load(self, operation_id: str) -> OperationRecord | None: ...


@dataclass(frozen=True)
class BulkLimits:
    """BULK_MAX_IDS and BULK_PAGE_SIZE."""

    max_ids: int = 1000
    page_size: int = 100
    concurrency: int = DEFAULT_CONCURRENCY


def request_hash(action: BulkAction, request: Mapping[str, Any]) -> str:
    canonical = json.dumps({"action": action.value, **request}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_operation_id() -> str:
    return new_id("op")


async def walk(
    store: BulkStore,
    where: ExecutionFilter,
    skip: Mapping[str, object],
    room: int,
    page_size: int,
) -> tuple[list[list[str]], bool]:
    """The matches not in `skip`, page by page, at most `room` in all; and whether more
    matched than that (truncated)."""
    pages: list[list[str]] = []
    after: Candidate | None = None
    size = page_size
    while True:
        page = await store.matching(where, after=after, limit=size)
        if not page:
            return pages, False
        after = page[-1]
        fresh = [c.execution_id for c in page if c.execution_id not in skip]
        if len(fresh) > room:
            pages.append(fresh[:room])
            return pages, True
        if fresh:
            pages.append(fresh)
            room -= len(fresh)
        if len(page) < size:
            return pages, False
        if room == 0:
            more = await store.matching(where, after=after, limit=size)
            return pages, any(c.execution_id not in skip for c in more)


def stop_filter(where: ExecutionFilter) -> ExecutionFilter:
    """What a stop selects: only unfinished executions (all of them without a status)."""
    statuses = tuple(s for s in (where.statuses or UNFINISHED) if not s.is_terminal)
    if not statuses:
        raise InvalidBulkRequest("only unfinished executions can be stopped")
    return replace(where, statuses=statuses)


def reroute_filter(
    where: ExecutionFilter, to: Track, include_dbos_streams: bool = True
) -> ExecutionFilter:
    """What a reroute to `to` selects: unstarted executions on the other track, without those
    its hold-back rule keeps (so a dry run lists what would really move)."""
    source = other_track(to)
    if where.track is not None and where.track is not source:
        raise InvalidBulkRequest(f"executions on {where.track} cannot be rerouted to {to}")
    statuses = tuple(s for s in (where.statuses or UNSTARTED) if s in UNSTARTED)
    if not statuses:
        raise InvalidBulkRequest("only unstarted (created, queued) executions can be rerouted")
    return replace(
        where,
        track=source,
        statuses=statuses,
        excluding=hold_back_rule(to, include_dbos_streams),
    )


async def preview(
    store: BulkStore,
    action: BulkAction,
    where: ExecutionFilter,
    request: dict[str, Any],
    limits: BulkLimits,
) -> BulkResult:
    """A dry run: what the action would act on now (at most BULK_MAX_IDS), changing nothing.
    `where` is already the action's (`stop_filter`, `reroute_filter`)."""
    pages, truncated = await walk(store, where, {}, limits.max_ids, limits.page_size)
    would = Outcome.WOULD_STOP if action is BulkAction.STOP else Outcome.WOULD_MOVE
    results = {i: ItemResult(would) for page in pages for i in page}
    return BulkResult(None, action, True, False, truncated, results, request)


Act = Callable[[str], Awaitable[ItemResult]]


class BulkActions:
    """Stop or reroute by filter over the service and the reroute rules."""

    def __init__(
        self,
        service: ExecutionService,
        store: BulkStore,
        *,
        reroutes: Any,
        audit: Any,
        limits: BulkLimits | None = None,
    ) -> None:
        self.service = service
        self.store = store
        self.reroutes = reroutes
        self.audit = audit
        self.limits = limits or BulkLimits()

    # -- the two actions --------------------------------------------------------------------

    async def stop(
        self,
        where: ExecutionFilter,
        *,
        reason: str,
        requested_by: str,
        dry_run: bool,
        operation_id: str | None = None,
    ) -> BulkResult:
        """Stop (with their trees) the unfinished executions `where` selects."""
        where = stop_filter(where)

        async def act(execution_id: str) -> ItemResult:
            try:
                record = await self.service.command(None, execution_id, Command.STOP, reason)
            except Conflict as exc:
                return ItemResult(Outcome.SKIPPED, str(exc))
            except NotFound:
                return ItemResult(Outcome.SKIPPED, "no such execution")
            if record.status.is_terminal:
                return ItemResult(Outcome.STOPPED, f"now {record.status}")
            return ItemResult(Outcome.STOPPED, f"stop sent to its worker ({record.status})")

        request = {"filter": where.to_json(), "reason": reason}
        return await self._run(
            BulkAction.STOP,
            where,
            request,
            act,
            Outcome.WOULD_STOP,
            dry_run,
            operation_id,
            requested_by,
        )

    async def reroute(
        self,
        where: ExecutionFilter,
        *,
        to: Track,
        requested_by: str,
        dry_run: bool,
        include_dbos_streams: bool = True,
        operation_id: str | None = None,
    ) -> BulkResult:
        """Move the unstarted executions `where` selects from the other track to `to`."""
        source = other_track(to)
        where = reroute_filter(where, to, include_dbos_streams)
        if not dry_run:
            for track in (to, source):
                if track not in self.service.queues:
                    raise TrackUnavailable(f"the {track} track is not available in this process")

        async def act(execution_id: str) -> ItemResult:
            try:
                outcome = await move_one(
                    self.service, self.reroutes, self.audit, execution_id, to, include_dbos_streams
                )
            except Exception as exc:
                log.warning("bulk reroute failed", execution_id=execution_id, exc_info=True)
                return ItemResult(Outcome.FAILED, f"{type(exc).__name__}: {exc}")
            if isinstance(outcome, Moved):
                return ItemResult(Outcome.MOVED, f"{outcome.status} on {source}, now on {to}")
            kind = Outcome.FAILED if isinstance(outcome, Failed) else Outcome.SKIPPED
            return ItemResult(kind, outcome.reason)

        request = {
            "filter": where.to_json(),
            "to": to.value,
            "include_dbos_streams": include_dbos_streams,
        }
        return await self._run(
            BulkAction.REROUTE,
            where,
            request,
            act,
            Outcome.WOULD_MOVE,
            dry_run,
            operation_id,
            requested_by,
        )

    # -- the operation ----------------------------------------------------------------------

    async def _walk(
        self, where: ExecutionFilter, skip: Mapping[str, object], room: int
    ) -> tuple[list[list[str]], bool]:
        return await walk(self.store, where, skip, room, self.limits.page_size)

    async def _run(
        self,
        action: BulkAction,
        where: ExecutionFilter,
        request: dict[str, Any],
        act: Act,
        would: Outcome,
        dry_run: bool,
        operation_id: str | None,
        requested_by: str,
    ) -> BulkResult:
        if dry_run:
            return await preview(self.store, action, where, request, self.limits)
        op_id = operation_id or new_operation_id()
        fingerprint = request_hash(action, request)
        record = await self.store.begin(op_id, action, fingerprint, request, requested_by)
        if record.request_hash != fingerprint or record.action is not action:
            raise OperationIdReused(op_id)
        if record.finished:
            return self._result(record, replayed=True)
        room = self.limits.max_ids - len(record.results)
        pages, truncated = await self._walk(where, record.results, max(room, 0))
        slots = asyncio.Semaphore(max(1, self.limits.concurrency))

        async def one(execution_id: str) -> None:
            async with slots:
                try:
                    result = await act(execution_id)
                except Exception as exc:
                    log.warning("bulk action failed", execution_id=execution_id, exc_info=True)
                    result = ItemResult(Outcome.FAILED, f"{type(exc).__name__}: {exc}")
                await self.store.settle(op_id, execution_id, result)

        for page in pages:
            taken = await self.store.take(op_id, page)
            await asyncio.gather(*(one(i) for i in taken))
        await self.store.finish(op_id, truncated=truncated)
        final = await self.store.load(op_id)
        assert final is not None  # begun above
        log.info(
            "bulk operation done", operation_id=op_id, action=action.value, acted=len(final.results)
        )
        return self._result(final, replayed=not record.created)

    @staticmethod
    def _result(record: OperationRecord, *, replayed: bool) -> BulkResult:
        return BulkResult(
            record.id,
            record.action,
            False,
            replayed,
            record.truncated,
            dict(record.results),
            record.request,
        )
