"""What the console draws from an execution's event stream: the per-node waterfall and each
node's last status. Pure functions over events, so both are unit-tested without servers.

Only the stream is used (not the row): it is the one record both tracks write the same way,
with a timestamp per event, and it already holds every attempt (`execution.retrying` opens
the next), so a waterfall shows retries as separate attempts like Inngest's run view does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from twintrack.domain.events import Event, EventType

_E = EventType


@dataclass
class Bar:
    """One bar: a wait (queue, re-queue, pause) or one node's run, in ms from `queued`."""

    label: str
    kind: str  # "queue" | "requeue" | "pause" | "node"
    start_ms: float
    end_ms: float | None = None  # None: still going
    status: str = "running"  # for nodes: running|completed|failed|skipped|cancelled|abandoned
    node_id: str | None = None

    @property
    def duration_ms(self) -> float | None:
        return None if self.end_ms is None else self.end_ms - self.start_ms


@dataclass
class Attempt:
    number: int
    start_ms: float
    bars: list[Bar] = field(default_factory=list)


@dataclass
class Waterfall:
    """Bars grouped by attempt; `span_ms` is the time from `queued` to the last event."""

    attempts: list[Attempt]
    span_ms: float
    ended: str | None  # the terminal event type, if any

    def scale(self, width: float) -> float:
        """Pixels per ms so the whole span fits `width`."""
        return width / max(self.span_ms, 1.0)


def _ms(at: datetime, t0: datetime) -> float:
    return (at - t0).total_seconds() * 1000


def waterfall(events: Sequence[Event]) -> Waterfall:
    """Queue wait → start → each node's run, one group per attempt, from the events alone."""
    if not events:
        return Waterfall([], 0.0, None)
    # The axis starts when the execution was queued: the wait before `start` is the caller's.
    queued = [e.timestamp for e in events if e.type is _E.EXECUTION_QUEUED]
    t0 = queued[0] if queued else events[0].timestamp
    attempts: list[Attempt] = []
    open_nodes: dict[str, Bar] = {}
    queued_at: float | None = None
    paused: Bar | None = None
    last_ms = 0.0
    ended: str | None = None

    def close_open(at: float, status: str) -> None:
        for bar in open_nodes.values():
            bar.end_ms, bar.status = at, status
        open_nodes.clear()

    def current(at: float) -> Attempt:
        if not attempts:
            attempts.append(Attempt(1, at))
        return attempts[-1]

    for event in events:
        at = _ms(event.timestamp, t0)
        node_id = event.data.get("node_id")
        if event.type is _E.EXECUTION_QUEUED:
            queued_at = at
        elif event.type is _E.EXECUTION_STARTED:
            attempt = current(at)
            if queued_at is not None and attempt.number == 1 and not attempt.bars:
                attempt.bars.append(Bar("queue wait", "queue", queued_at, at, "completed"))
        elif event.type is _E.EXECUTION_RETRYING:
            close_open(at, "abandoned")
            previous_end = last_ms
            number = int(event.data.get("attempt", len(attempts) + 1))
            attempt = Attempt(number, at)
            attempt.bars.append(Bar("re-queued", "requeue", previous_end, at, "completed"))
            attempts.append(attempt)
        elif event.type is _E.NODE_STARTED and isinstance(node_id, str):
            bar = Bar(node_id, "node", at, node_id=node_id)
            current(at).bars.append(bar)
            open_nodes[node_id] = bar
        elif event.type in (_E.NODE_COMPLETED, _E.NODE_FAILED) and isinstance(node_id, str):
            status = "completed" if event.type is _E.NODE_COMPLETED else "failed"
            started = open_nodes.pop(node_id, None)
            if started is None:  # its start was in a part of the stream not read
                duration = float(event.data.get("duration_ms") or 0.0)
                started = Bar(node_id, "node", at - duration, node_id=node_id)
                current(at).bars.append(started)
            started.end_ms, started.status = at, status
        elif event.type is _E.NODE_SKIPPED and isinstance(node_id, str):
            current(at).bars.append(Bar(node_id, "node", at, at, "skipped", node_id))
        elif event.type is _E.EXECUTION_PAUSED:
            paused = Bar("paused", "pause", at)
            current(at).bars.append(paused)
        elif event.type is _E.EXECUTION_RESUMED and paused is not None:
            paused.end_ms, paused.status, paused = at, "completed", None
        elif event.type.is_terminal:
            ended = event.type.value
            close_open(at, "cancelled")
            if paused is not None:
                paused.end_ms, paused.status = at, "completed"
        last_ms = max(last_ms, at)
    last_ms = max(last_ms, 0.0)
    return Waterfall(attempts, last_ms, ended)


def node_statuses(events: Sequence[Event]) -> dict[str, str]:
    """Each node's last status in the stream (a later attempt overrides an earlier one)."""
    statuses: dict[str, str] = {}
    for event in events:
        node_id = event.data.get("node_id")
        if not isinstance(node_id, str):
            continue
        match event.type:
            case _E.NODE_STARTED:
                statuses[node_id] = "running"
            case _E.NODE_COMPLETED:
                statuses[node_id] = "completed"
            case _E.NODE_FAILED:
                statuses[node_id] = "failed"
            case _E.NODE_SKIPPED:
                statuses[node_id] = "skipped"
            case _:
                pass
    if events and events[-1].type.is_terminal:
        for node_id, status in statuses.items():
            if status == "running":
                statuses[node_id] = "cancelled"
    return statuses


async def read_available(
    events: AsyncIterator[Event], *, idle_s: float = 0.25, limit: int = 10_000
) -> list[Event]:
    """The events a stream has now: up to the terminal one, or until none came for `idle_s`.

    A live stream never ends by itself, and a page must render what happened so far; the
    live log (SSE) shows what comes after.
    """
    read: list[Event] = []
    try:
        while len(read) < limit:
            try:
                event = await asyncio.wait_for(anext(events), idle_s)
            except (TimeoutError, StopAsyncIteration):
                break
            read.append(event)
            if event.type.is_terminal:
                break
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
    return read
