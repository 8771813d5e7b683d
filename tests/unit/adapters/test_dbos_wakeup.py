"""The queue poller's stop event: a wake-up ends DBOS's wait between polls at once (and is never
lost when it comes during a poll), the wait never outlasts the configured interval whatever back-off
DBOS asks for, and a stop still reads as a stop."""

from __future__ import annotations

import threading
import time

from twintrack.adapters.dbos.wakeup import WakeableStopEvent


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
