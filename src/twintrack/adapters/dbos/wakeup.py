"""Dequeue a started DBOS execution at once, not at the next queue poll.

DBOS 3.4's queue worker thread (`dbos._queue.queue_worker_thread`) sleeps its polling interval
on a stop event between polls, and doubles that interval (up to 120 s, shrinking by 0.9 per
quiet poll) after each poll that hit a serialization conflict with another worker's. Here that
thread is started by us for our queue (DBOS's queue manager is told to listen to no user queue),
with a stop event whose `wait` also ends on a wake-up and never lasts longer than the configured
interval, so the back-off never stretches a poll past it.

What wakes the poller, and why each:
- a workflow of the queue becomes ENQUEUED (a Postgres trigger, `install`, NOTIFYs `enqueued`;
  a listener thread per worker wakes the poller): new work, for every worker;
- one of this worker's own workflows finishes while the worker was full (`WakingActiveSet`,
  in-process): a local slot freed, so a backlog is taken as slots free;
- with a global concurrency limit only: a workflow is claimed (`claimed`: a peer whose poll
  lost the race to that claim's locks polls again) or leaves PENDING (`freed`: a slot of the
  cluster's budget). Without a global limit DBOS claims with SKIP LOCKED under READ COMMITTED,
  so workers never conflict and a peer's claim or finish tells this worker nothing: those
  notifications are ignored, which is what keeps an idle peer from polling once per execution.
So polls follow changes, and the interval is only the fallback for a lost notification. The
poll itself is DBOS's own, one thread per process as before, so the global and per-worker
concurrency limits stay exactly DBOS's. Wake-ups that arrive while a poll runs fold into one
more poll, and polls start at least `_MIN_POLL_GAP_S` apart, so under load one poll claims what
several wake-ups announced instead of each costing a poll. Without the trigger (or while the
listener reconnects) the poller simply polls at the interval.

Each poll also costs less than DBOS's own: the poller serves a copy of the queue that is not
re-read from the database before every poll (`fixed_queue`: its limits are the ones this
process registered at launch), and whether this worker's version is the latest registered one
(which DBOS asks inside every claim) is remembered for `_VERSION_TTL_S` (versions change
with deploys, not per poll; ours are pinned on every workflow anyway).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import psycopg
import sqlalchemy as sa
import structlog

from twintrack.adapters.dbos.names import QUEUE_NAME

log = structlog.get_logger()
CHANNEL = "twintrack_dbos_queue"
#: the notification payloads: what happened to a workflow of the queue
ENQUEUED, CLAIMED, FREED = "enqueued", "claimed", "freed"
_LISTEN_TIMEOUT_S = 0.5
_RECONNECT_S = 1.0
_INSTALL_LOCK = 0x7477616B65  # "twake": one installer at a time
# At most one poll per this many seconds per worker: an idle worker's first wake-up polls at
# once; a busy one batches (a poll is a config read and a claim transaction).
_MIN_POLL_GAP_S = 0.02
_VERSION_TTL_S = 5.0

_TRIGGER_SQL = [
    f"""
    CREATE OR REPLACE FUNCTION dbos.twintrack_queue_wake() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' OR NEW.status = 'ENQUEUED' THEN
            PERFORM pg_notify('{CHANNEL}', '{ENQUEUED}');
        ELSIF NEW.status = 'PENDING' THEN
            PERFORM pg_notify('{CHANNEL}', '{CLAIMED}');
        ELSE
            PERFORM pg_notify('{CHANNEL}', '{FREED}');
        END IF;
        RETURN NULL;
    END $$
    """,
    "DROP TRIGGER IF EXISTS twintrack_queue_wake_insert ON dbos.workflow_status",
    f"""
    CREATE TRIGGER twintrack_queue_wake_insert AFTER INSERT ON dbos.workflow_status
    FOR EACH ROW WHEN (NEW.queue_name = '{QUEUE_NAME}' AND NEW.status = 'ENQUEUED')
    EXECUTE FUNCTION dbos.twintrack_queue_wake()
    """,
    "DROP TRIGGER IF EXISTS twintrack_queue_wake_update ON dbos.workflow_status",
    f"""
    CREATE TRIGGER twintrack_queue_wake_update AFTER UPDATE OF status ON dbos.workflow_status
    FOR EACH ROW WHEN (
        COALESCE(NEW.queue_name, OLD.queue_name) = '{QUEUE_NAME}'
        AND NEW.status IS DISTINCT FROM OLD.status
        AND (NEW.status IN ('ENQUEUED', 'PENDING') OR OLD.status = 'PENDING')
    )
    EXECUTE FUNCTION dbos.twintrack_queue_wake()
    """,
]


def _libpq_url(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def install(system_database_url: str) -> None:
    """Create (or replace) the NOTIFY triggers on DBOS's workflow table: after DBOS.migrate."""
    with psycopg.connect(_libpq_url(system_database_url)) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INSTALL_LOCK,))
        for statement in _TRIGGER_SQL:
            conn.execute(statement)


class WakeableStopEvent:
    """What DBOS's queue worker thread needs of its stop event (`wait`, `is_set`), plus `wake`.

    `wait` returns whether the poller must stop, as `threading.Event.wait` does; it returns
    early (False) on a wake-up, and waits at most `max_wait_s` whatever DBOS asks."""

    def __init__(self, max_wait_s: float, min_gap_s: float = _MIN_POLL_GAP_S) -> None:
        self.max_wait_s = max_wait_s
        self.min_gap_s = min_gap_s
        self._cond = threading.Condition()
        self._stopped = False
        self._woken = False
        self._last = -math.inf

    def is_set(self) -> bool:
        return self._stopped

    def set(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        limit = self.max_wait_s if timeout is None else min(timeout, self.max_wait_s)
        with self._cond:
            if not (self._stopped or self._woken):
                self._cond.wait(limit)
            earliest = self._last + self.min_gap_s
            while not self._stopped and (now := time.monotonic()) < earliest:
                self._cond.wait(earliest - now)
            self._woken = False
            self._last = time.monotonic()
            return self._stopped


def fixed_queue(queue: Any) -> Any:
    """The registered queue as the poller serves it: not re-read before every poll (DBOS's
    queue worker thread reloads a database-backed queue each iteration, one query a poll)."""
    served = copy.copy(queue)
    served.database_backed_queue = False
    return served


def remember_latest_version(sys_db: Any, ttl_s: float = _VERSION_TTL_S) -> None:
    """Make the system database's `_is_latest_version` answer from memory for `ttl_s` (DBOS
    reads the application versions inside every claim transaction: one query a poll)."""
    ask = sys_db._is_latest_version
    known: dict[str, tuple[float, bool]] = {}

    def is_latest_version(app_version: str, c: Any = None) -> bool:
        now = time.monotonic()
        hit = known.get(app_version)
        if hit is not None and now - hit[0] < ttl_s:
            return hit[1]
        answer = bool(ask(app_version, c))
        known[app_version] = (now, answer)
        return answer

    sys_db._is_latest_version = is_latest_version


def wakes(payload: str, *, global_limit: bool) -> bool:
    """Whether a notification of the queue is a reason for this worker to poll (see above);
    an empty payload (a trigger installed by an older release) always is."""
    return payload in ("", ENQUEUED) or global_limit


def waking_active_set(queue_name: str, worker_concurrency: int, wake: Callable[[], None]) -> Any:
    """DBOS's registry of this process's running workflows (`dbos._core.ActiveWorkflowById`,
    which the queue poller counts against the worker's limit), calling `wake` when one of the
    queue's workflows leaves it while the worker was full. Made here so the private base class
    is imported only with DBOS; pinned by tests/unit/adapters/test_dbos_internals.py."""
    from dbos._core import ActiveWorkflowById

    class WakingActiveSet(ActiveWorkflowById):
        def _remove(self, key: str, bucket: Any) -> None:
            ours = bucket is not None and bucket[0] == queue_name
            full = ours and self.count_for_queue(queue_name) >= worker_concurrency
            super()._remove(key, bucket)
            if full:  # after the removal: the poll this wakes counts the slot as free
                wake()

    return WakingActiveSet()


class QueuePoller:
    """DBOS's queue worker thread for our queue, woken by the queue's NOTIFYs and by this
    worker's own finished workflows."""

    def __init__(self, system_database_url: str, max_wait_s: float, *, global_limit: bool) -> None:
        self._url = _libpq_url(system_database_url)
        self.event = WakeableStopEvent(max_wait_s)
        self.global_limit = global_limit
        self._threads: list[threading.Thread] = []

    def start(self, dbos: Any, queue: Any) -> None:
        from dbos._queue import queue_worker_thread

        poller = threading.Thread(
            target=queue_worker_thread,
            args=(cast(threading.Event, self.event), dbos, queue),
            name=f"queue-worker-{QUEUE_NAME}",
            daemon=True,
        )
        listener = threading.Thread(
            target=self._listen, name="twintrack-queue-listener", daemon=True
        )
        self._threads = [poller, listener]
        for thread in self._threads:
            thread.start()

    def stop(self, join_s: float) -> None:
        """Stop polling; nothing is dequeued after this returns. Idempotent."""
        self.event.set()
        for thread in self._threads:
            thread.join(join_s)

    def _listen(self) -> None:
        while not self.event.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.event.wake()  # whatever was enqueued while not listening
                    while not self.event.is_set():
                        for note in conn.notifies(timeout=_LISTEN_TIMEOUT_S):
                            if wakes(note.payload, global_limit=self.global_limit):
                                self.event.wake()
            except Exception as exc:
                if self.event.is_set():
                    return
                log.warning("dbos queue listener reconnecting", error=repr(exc))
                time.sleep(_RECONNECT_S)
