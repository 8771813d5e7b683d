"""What recovery needs kept and asked, in its own terms: the recovery store, the audit, a leader.

Recovery (core/recovery.py, core/children_sweep.py, core/dead_executors.py, core/attempts.py,
core/rollout.py) decides; these ports answer its questions and apply its decisions.
adapters/postgres implements them in SQL (adapters/postgres/recovery.py, leader.py),
adapters/memory in memory for the unit tests (adapters/memory/recovery.py). A method taking a
`LockedExecution` joins that execution's row-lock transaction: what it writes commits with
everything else done under the lock, or not at all.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from twintrack.core.records import ExecutionRecord, ExpiredClaim
from twintrack.core.stores import LockedExecution
from twintrack.domain.attempts import HANDOVER
from twintrack.domain.execution import EventsBackend, ExecutionStatus, Track


class Reason(StrEnum):
    """Why an audit row was written (`execution_recoveries.reason`, the `recoveries` label)."""

    EXPIRED_CLAIM = "expired_claim"
    STALE_QUEUED = "stale_queued"
    GAVE_UP = "max_attempts"
    #: a worker saw its own run crash or lose its lease (not counted as a recovery)
    RUN_FAILED = "run_failed"
    DEAD_EXECUTOR = "dead_executor"
    REPAIR_QUEUED = "repair_queued"
    ORPHAN_CHILD = "orphan_child"
    REROUTED = "rerouted"
    HANDOVER = HANDOVER


@dataclass(frozen=True)
class Recovery:
    """One row of the recovery audit: what happened to which attempt of an execution, and why."""

    execution_id: str
    track: Track
    reason: Reason
    attempt: int
    #: the worker that held the run, if one did
    worker_id: str | None = None
    #: what happened, in words (the text a give-up after MAX_ATTEMPTS quotes)
    detail: str | None = None


@dataclass(frozen=True)
class LastClaim:
    """The claim of a locked execution's latest run, as the give-up rule sees it."""

    #: the worker holding it; None once released or taken back
    holder: str | None
    expired: bool


@dataclass(frozen=True)
class Untouched:
    """An unfinished execution nothing has touched for a while and no live claim holds."""

    execution_id: str
    events_backend: EventsBackend
    attempt: int


@dataclass(frozen=True)
class Orphan:
    """A child a crash left behind: never started under an ended (or gone) parent, or unfinished
    under a stopped parent that never told it to stop."""

    child_id: str
    track: Track
    parent_id: str
    #: None when the parent row is gone
    parent_status: ExecutionStatus | None


class HoldBack(StrEnum):
    """Why an unstarted execution is kept from a reroute (the rule, not a race)."""

    DBOS_STREAMS = "its events are in a DBOS stream"
    LEFT_DBOS = "it left the DBOS track before: its DBOS workflow id may be spent"


@dataclass(frozen=True)
class Unstarted:
    execution_id: str
    status: ExecutionStatus
    events_backend: EventsBackend


@dataclass(frozen=True)
class TrackCount:
    """Executions of one track in one status; the oldest one's age for unfinished statuses."""

    track: Track
    status: ExecutionStatus
    count: int
    oldest_age_s: float | None = None


class RecoveryStore(Protocol):
    """The executions and claims recovery looks for, and the moves it makes on them."""

    async def expired_claims(self, limit: int) -> list[ExpiredClaim]:
        """Kafka-track leases that ran out while their execution was running or paused, oldest
        first (DBOS-track runs are taken over by their workflow's re-run instead)."""
        ...

    def take_back(
        self, expired: ExpiredClaim
    ) -> AbstractAsyncContextManager[LockedExecution | None]:
        """End the expired lease so its holder is fenced out, and hold the execution's row lock
        in the same transaction: what is done through the handle commits with the take-back.
        None (and nothing changed) when the claim changed since it was read (renewed late,
        taken back already)."""
        ...

    async def last_claim(self, row: LockedExecution) -> LastClaim | None:
        """The execution's claim, locked for the transaction; None when it never had one."""
        ...

    async def release_claim(self, row: LockedExecution) -> None:
        """End the lease at once: nobody holds the execution any more."""
        ...

    async def touch_untouched(
        self,
        *,
        track: Track,
        statuses: Collection[ExecutionStatus],
        older_than_s: float,
        limit: int,
    ) -> list[Untouched]:
        """Executions of `track` in `statuses`, untouched for `older_than_s`, with no live
        claim: what a sweeper re-delivers because nothing else will. At most `limit`, oldest
        first, each touched so the next sweep leaves it alone for another period; ones another
        sweeper is touching are skipped, not waited for."""
        ...

    async def never_started_roots(self, older_than_s: float, limit: int) -> list[str]:
        """Roots still `created` after `older_than_s`."""
        ...

    async def orphan_children(self, grace_s: float, limit: int) -> list[Orphan]:
        """Children to repair, oldest first: only under parents that ended more than `grace_s`
        ago (or are gone), so a spawn or a stop still on its way is never raced."""
        ...

    async def attempts(self, execution_ids: Collection[str]) -> dict[str, tuple[Track, int]]:
        """The track and attempt of each execution that exists."""
        ...


class RecoveryAudit(Protocol):
    """The audit trail (`execution_recoveries`): written only through core/audit.py."""

    async def write(
        self, entries: Sequence[Recovery], *, within: LockedExecution | None = None
    ) -> None:
        """Store the rows, in `within`'s transaction when given, else in one of their own."""
        ...

    async def handovers(self, row: LockedExecution) -> int:
        """How many runs of the execution were handed over at shutdown (spent no attempt)."""
        ...

    async def last_failure(self, row: LockedExecution) -> str | None:
        """What the newest row about the execution's current attempt says happened (handovers
        aside); None when no row says."""
        ...

    async def left_dbos(self, row: LockedExecution) -> bool:
        """Whether the execution was ever rerouted off the DBOS track."""
        ...


class RerouteStore(Protocol):
    """Executions by track for rollout status, and the unstarted ones a reroute moves."""

    async def counts(self, *, include_finished: bool) -> list[TrackCount]:
        """Executions per (track, status), from the database clock; finished statuses only with
        `include_finished` (they need a scan of the whole table)."""
        ...

    async def unstarted(
        self,
        track: Track,
        *,
        owner_id: str | None,
        limit: int | None,
        excluding: HoldBack | None,
    ) -> list[Unstarted]:
        """`created` or `queued` executions on `track` (only `owner_id`'s when given), oldest
        first, without those `excluding` keeps back."""
        ...

    async def held_back(self, track: Track, *, owner_id: str | None, rule: HoldBack) -> int:
        """How many unstarted executions on `track` the rule keeps back."""
        ...

    async def move(self, row: LockedExecution, to: Track) -> ExecutionRecord:
        """Set the locked execution's track."""
        ...


class Leader(Protocol):
    """One process of the cluster leads a sweep at a time."""

    @property
    def name(self) -> str: ...

    async def lead(self) -> bool:
        """True while this process leads (taking the lead when it is free)."""
        ...

    async def release(self) -> None:
        """Give the lead up, so another process takes it at once."""
        ...


class GoneWorkers(Protocol):
    async def gone(self, silent_s: float, *, track: str, within_s: float = 3600) -> list[str]:
        """Workers of `track` that stopped, or went silent for `silent_s`, recently."""
        ...


class Workflows(Protocol):
    """The DBOS track's own recovery: workflows of executors that will not come back."""

    @property
    def executor_id(self) -> str:
        """This process's own executor, never recovered by itself."""
        ...

    async def recover(self, executor_ids: Sequence[str]) -> list[str]:
        """Hand the pending workflows of these executors to live ones; the workflow ids."""
        ...

    async def redeliver(self, executions: Mapping[str, EventsBackend]) -> dict[str, str]:
        """Make sure each execution's workflow will run; what was done, by execution id."""
        ...
