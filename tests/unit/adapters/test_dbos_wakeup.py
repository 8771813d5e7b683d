"""The queue poller's stop event: a wake-up ends DBOS's wait between polls at once (and is never
lost when it comes during a poll), the wait never outlasts the configured interval whatever back-off
DBOS asks for, and a stop still reads as a stop."""

from __future__ import annotations

import threading
import time
import types

from twintrack.adapters.dbos.names import QUEUE_NAME
from twintrack.adapters.dbos.wakeup import (
    CLAIMED,
    ENQUEUED,
    FREED,
    WakeableStopEvent,
    fixed_queue,
    remember_latest_version,
    wakes,
    waking_active_set,
)


def test_a_wake_up_ends_the_wait_without_stopping() -> None:
    event = WakeableStopEvent(max_wait_s=30.0, min_gap_s=0.0)
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(event.wait(120.0)))
    waiter.start()
    deadline = time.monotonic() + 5.0
    while waiter.is_alive() and time.monotonic() < deadline:
        event.wake()
        waiter.join(0.01)
    assert result == [False]
    assert not event.is_set()


def test_a_wake_up_before_the_wait_is_kept_once() -> None:
    event = WakeableStopEvent(max_wait_s=30.0, min_gap_s=0.0)
    event.wake()
    event.wake()
    assert event.wait(120.0) is False  # at once: the wake-ups of a poll fold into one
    started = time.monotonic()
    assert event.wait(0.05) is False
    assert time.monotonic() - started >= 0.04


def test_the_wait_is_capped_at_the_interval() -> None:
    event = WakeableStopEvent(max_wait_s=0.05)
    started = time.monotonic()
    assert event.wait(120.0) is False  # DBOS's contention back-off asks for up to 120 s
    assert time.monotonic() - started < 5.0


def test_a_stop_ends_the_wait_and_stays() -> None:
    event = WakeableStopEvent(max_wait_s=30.0)
    event.set()
    assert event.is_set()
    assert event.wait(120.0) is True
    event.wake()
    assert event.wait(120.0) is True


def test_polls_start_at_least_the_gap_apart_and_a_stop_cuts_the_gap() -> None:
    event = WakeableStopEvent(max_wait_s=30.0, min_gap_s=0.2)
    event.wake()
    assert event.wait(120.0) is False  # the first poll after a quiet spell: at once
    started = time.monotonic()
    event.wake()
    assert event.wait(120.0) is False
    assert time.monotonic() - started >= 0.15  # a busy worker batches
    stopper = threading.Timer(0.05, event.set)
    event.wake()
    stopper.start()
    assert event.wait(120.0) is True
    stopper.join()


def test_without_a_global_limit_only_new_work_wakes_a_worker() -> None:
    # SKIP LOCKED claims never conflict: a peer's claim or finish is no reason to poll.
    assert wakes(ENQUEUED, global_limit=False)
    assert not wakes(CLAIMED, global_limit=False)
    assert not wakes(FREED, global_limit=False)
    # With one, a freed slot of the cluster's budget and a lost claim race both are.
    assert all(wakes(p, global_limit=True) for p in (ENQUEUED, CLAIMED, FREED))
    assert wakes("", global_limit=False)  # a trigger from before the payloads: always


def test_a_finished_workflow_wakes_the_poller_only_when_the_worker_was_full() -> None:
    woken: list[int] = []
    active = waking_active_set(
        QUEUE_NAME, 2, lambda: woken.append(active.count_for_queue(QUEUE_NAME))
    )
    first = active.add("wf-1", QUEUE_NAME)
    other = active.add("wf-other", "another-queue")
    other.release()
    first.release()
    assert woken == []  # one of two slots was in use: the enqueue notifications suffice
    entries = [active.add(f"wf-{i}", QUEUE_NAME) for i in range(2)]
    entries[0].release()
    assert woken == [1]  # full, then a slot freed: the poll it wakes sees the slot free
    entries[0].release()  # idempotent: a release twice frees one slot
    entries[1].release()
    assert woken == [1]


def test_the_served_queue_is_not_reread_and_the_registered_one_is_untouched() -> None:
    registered = types.SimpleNamespace(name=QUEUE_NAME, database_backed_queue=True)
    served = fixed_queue(registered)
    assert (served.name, served.database_backed_queue) == (QUEUE_NAME, False)
    assert registered.database_backed_queue is True


def test_the_latest_version_answer_is_remembered_for_a_while() -> None:
    asked: list[str] = []

    def ask(version: str, c: object = None) -> bool:
        asked.append(version)
        return version == "v2"

    sys_db = types.SimpleNamespace(_is_latest_version=ask)
    remember_latest_version(sys_db, ttl_s=0.2)
    assert [sys_db._is_latest_version("v2") for _ in range(3)] == [True] * 3
    assert sys_db._is_latest_version("v1", None) is False
    assert asked == ["v2", "v1"]  # one query per version, not per poll
    deadline = time.monotonic() + 5
    while asked.count("v2") < 2 and time.monotonic() < deadline:  # then asked again
        sys_db._is_latest_version("v2")
    assert asked.count("v2") == 2
