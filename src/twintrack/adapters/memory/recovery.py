"""Recovery's ports in memory (core/recovery_ports.py), over one `MemoryStores` set.

They read and change the same executions, leases and commands the memory execution and claim
stores keep, and answer as the SQL of adapters/postgres/recovery.py does. What a method does
within a `LockedExecution` is staged on the handle and applied only when the lock's block ends
normally, as a Postgres transaction commits. `backdate` ages an execution, so a test asks "a
while later" without waiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta

from twintrack.adapters.memory.stores import (
    RELEASED,
    MemoryLockedExecution,
    MemoryStores,
    _now,
)
from twintrack.core.audit import AuditTrail
from twintrack.core.records import ExecutionRecord, ExpiredClaim
from twintrack.core.recovery_ports import (
    HoldBack,
    LastClaim,
    Orphan,
    Reason,
    Recovery,
    TrackCount,
    Unstarted,
    Untouched,
)
from twintrack.core.stores import ACTIVE, LockedExecution
from twintrack.domain.commands import Command
from twintrack.domain.execution import EventsBackend, ExecutionStatus, Track

_S = ExecutionStatus
UNSTARTED = (_S.CREATED, _S.QUEUED)


def _handle(row: LockedExecution) -> MemoryLockedExecution:
    if not isinstance(row, MemoryLockedExecution):
        raise TypeError(f"not a memory lock: {type(row).__name__}")
    return row


class MemoryRecoveryAudit:
    """The audit rows, in order (`rows`); handovers the claim store wrote count as well."""

    def __init__(self, stores: MemoryStores) -> None:
        self._stores = stores
        self.rows: list[Recovery] = []

    async def write(
        self, entries: Sequence[Recovery], *, within: LockedExecution | None = None
    ) -> None:
        if within is None:
            self.rows.extend(entries)
        else:
            _handle(within).on_commit.append(lambda: self.rows.extend(entries))

    def of(self, execution_id: str) -> list[Recovery]:
        return [r for r in self.rows if r.execution_id == execution_id]

    async def handovers(self, row: LockedExecution) -> int:
        eid = row.record.id
        by_claims = sum(
            1
            for r in self._stores.claims.recoveries
            if r.execution_id == eid and r.reason == Reason.HANDOVER
        )
        return by_claims + sum(1 for r in self.of(eid) if r.reason is Reason.HANDOVER)

    async def last_failure(self, row: LockedExecution) -> str | None:
        for r in reversed(self.of(row.record.id)):
            if r.attempt == row.record.attempt and r.reason is not Reason.HANDOVER and r.detail:
                return r.detail
        return None

    async def left_dbos(self, row: LockedExecution) -> bool:
        return any(
            r.reason is Reason.REROUTED and r.track is Track.KAFKA for r in self.of(row.record.id)
        )


class MemoryRecoveryStore:
    def __init__(self, stores: MemoryStores) -> None:
        self._stores = stores

    @property
    def _records(self) -> dict[str, ExecutionRecord]:
        return self._stores.executions.records

    async def expired_claims(self, limit: int) -> list[ExpiredClaim]:
        now = _now()
        found = []
        for eid, lease in self._stores.claims.leases.items():
            record = self._records.get(eid)
            if (
                record is not None
                and lease.expires_at < now
                and lease.worker_id != RELEASED
                and record.status in ACTIVE
                and record.track is Track.KAFKA
            ):
                found.append((lease.expires_at, eid, lease, record))
        found.sort(key=lambda f: f[0])
        return [
            ExpiredClaim(eid, lease.worker_id, lease.generation, record.status, record.attempt)
            for _, eid, lease, record in found[:limit]
        ]

    @asynccontextmanager
    async def take_back(self, expired: ExpiredClaim) -> AsyncIterator[LockedExecution | None]:
        async with self._stores.executions.locked(expired.execution_id) as row:
            lease = self._stores.claims.leases.get(expired.execution_id)
            if lease is None or not (
                (lease.worker_id, lease.generation) == (expired.worker_id, expired.generation)
                and lease.expires_at < _now()
            ):
                yield None
                return

            def release() -> None:
                lease.worker_id = RELEASED

            row.on_commit.append(release)
            yield row

    async def last_claim(self, row: LockedExecution) -> LastClaim | None:
        lease = self._stores.claims.leases.get(row.record.id)
        if lease is None:
            return None
        return LastClaim(holder=lease.worker_id or None, expired=lease.expires_at < _now())

    async def release_claim(self, row: LockedExecution) -> None:
        eid = row.record.id

        def release() -> None:
            lease = self._stores.claims.leases.get(eid)
            if lease is not None:
                lease.worker_id, lease.expires_at = RELEASED, _now()

        _handle(row).on_commit.append(release)

    def _live_claim(self, execution_id: str) -> bool:
        lease = self._stores.claims.leases.get(execution_id)
        return lease is not None and lease.worker_id != RELEASED and lease.expires_at > _now()

    async def touch_untouched(
        self,
        *,
        track: Track,
        statuses: Collection[ExecutionStatus],
        older_than_s: float,
        limit: int,
    ) -> list[Untouched]:
        cutoff = _now() - timedelta(seconds=older_than_s)
        stale = sorted(
            (
                r
                for r in self._records.values()
                if r.status in statuses
                and r.track is track
                and r.updated_at < cutoff
                and not self._live_claim(r.id)
            ),
            key=lambda r: r.updated_at,
        )[:limit]
        for r in stale:
            self._records[r.id] = r.model_copy(update={"updated_at": _now()})
        return [Untouched(r.id, r.events_backend, r.attempt) for r in stale]

    async def never_started_roots(self, older_than_s: float, limit: int) -> list[str]:
        cutoff = _now() - timedelta(seconds=older_than_s)
        return [
            r.id
            for r in self._records.values()
            if r.status is _S.CREATED and r.parent_id is None and r.created_at < cutoff
        ][:limit]

    def _told_to_stop(self, execution_id: str) -> bool:
        return any(
            m.execution_id == execution_id and m.command is Command.STOP
            for m in self._stores.commands.commands
        )

    async def orphan_children(self, grace_s: float, limit: int) -> list[Orphan]:
        cutoff = _now() - timedelta(seconds=grace_s)
        found = []
        for child in sorted(self._records.values(), key=lambda r: r.created_at):
            if child.parent_id is None:
                continue
            parent = self._records.get(child.parent_id)
            settled = (
                parent is not None
                and parent.finished_at is not None
                and parent.finished_at < cutoff
            )
            never_started = child.status is _S.CREATED and (
                parent is None or (parent.status.is_terminal and settled)
            )
            not_told = (
                not child.status.is_terminal
                and parent is not None
                and parent.status is _S.STOPPED
                and settled
                and not self._told_to_stop(child.id)
            )
            if never_started or not_told:
                status = None if parent is None else parent.status
                found.append(Orphan(child.id, child.track, child.parent_id, status))
        return found[:limit]

    async def attempts(self, execution_ids: Collection[str]) -> dict[str, tuple[Track, int]]:
        return {
            eid: (r.track, r.attempt)
            for eid in execution_ids
            if (r := self._records.get(eid)) is not None
        }

    def backdate(self, execution_id: str, seconds: float) -> None:
        """Make the execution `seconds` older: created, last touched and finished that long
        before they were."""
        r = self._records[execution_id]
        ago = timedelta(seconds=seconds)
        self._records[execution_id] = r.model_copy(
            update={
                "created_at": r.created_at - ago,
                "updated_at": r.updated_at - ago,
                "finished_at": None if r.finished_at is None else r.finished_at - ago,
            }
        )


class MemoryRerouteStore:
    def __init__(self, stores: MemoryStores, audit: MemoryRecoveryAudit) -> None:
        self._stores = stores
        self._audit = audit

    @property
    def _records(self) -> dict[str, ExecutionRecord]:
        return self._stores.executions.records

    async def counts(self, *, include_finished: bool) -> list[TrackCount]:
        now = _now()
        groups: dict[tuple[Track, ExecutionStatus], list[ExecutionRecord]] = {}
        for r in self._records.values():
            if r.shadow_of is None and (include_finished or not r.status.is_terminal):
                groups.setdefault((r.track, r.status), []).append(r)
        return [
            TrackCount(
                track,
                status,
                len(rs),
                None
                if status.is_terminal
                else (now - min(r.created_at for r in rs)).total_seconds(),
            )
            for (track, status), rs in groups.items()
        ]

    def held(self, record: ExecutionRecord, rule: HoldBack) -> bool:
        """Whether `rule` keeps the execution from a reroute."""
        if rule is HoldBack.LEFT_DBOS:
            return any(
                r.reason is Reason.REROUTED and r.track is Track.KAFKA
                for r in self._audit.of(record.id)
            )
        return record.events_backend is EventsBackend.DBOS

    def _unstarted(self, track: Track, owner_id: str | None) -> list[ExecutionRecord]:
        return sorted(
            (
                r
                for r in self._records.values()
                if r.status in UNSTARTED
                and r.track is track
                and r.shadow_of is None
                and (owner_id is None or r.owner_id == owner_id)
            ),
            key=lambda r: (r.created_at, r.id),
        )

    async def unstarted(
        self,
        track: Track,
        *,
        owner_id: str | None,
        limit: int | None,
        excluding: HoldBack | None,
    ) -> list[Unstarted]:
        found = [
            Unstarted(r.id, r.status, r.events_backend)
            for r in self._unstarted(track, owner_id)
            if excluding is None or not self.held(r, excluding)
        ]
        return found if limit is None else found[:limit]

    async def held_back(self, track: Track, *, owner_id: str | None, rule: HoldBack) -> int:
        return sum(1 for r in self._unstarted(track, owner_id) if self.held(r, rule))

    async def move(self, row: LockedExecution, to: Track) -> ExecutionRecord:
        handle = _handle(row)
        handle.record = handle.record.model_copy(update={"track": to, "updated_at": _now()})
        return handle.record


class MemoryRecovery:
    """Recovery's memory adapters over one `MemoryStores`, and the audit trail on them."""

    def __init__(self, stores: MemoryStores) -> None:
        self.stores = stores
        self.audit = MemoryRecoveryAudit(stores)
        self.store = MemoryRecoveryStore(stores)
        self.reroutes = MemoryRerouteStore(stores, self.audit)
        self.trail = AuditTrail(self.audit, stores.executions)
