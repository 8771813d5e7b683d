"""Human-readable lines for events, shared by `twintrack run` (and later the CLI watchers)."""

from __future__ import annotations

import json
from typing import Any

from twintrack.domain.events import Event, EventType


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(event: Event) -> str:
    """What happened, in one line, without the envelope."""
    d = event.data
    node = d.get("node_id")
    t = event.type
    if t is EventType.NODE_STARTED:
        return f"{node} ({d.get('type')})"
    if t is EventType.NODE_COMPLETED:
        return f"{node} -> {_short(d.get('outputs'))} in {d.get('duration_ms')} ms"
    if t is EventType.NODE_FAILED:
        handled = "handled" if d.get("handled") else "unhandled"
        return f"{node}: {d.get('error')} ({handled})"
    if t is EventType.NODE_SKIPPED:
        return f"{node}: {d.get('reason')}"
    if t is EventType.NODE_LOG:
        return f"{node}: {d.get('message')}"
    if t is EventType.CHILD_SPAWNED:
        return f"{node} spawned {d.get('child_execution_id')} on event '{d.get('event')}'"
    if t is EventType.EXECUTION_COMPLETED:
        return f"outputs {_short(d.get('outputs'))}"
    if t is EventType.EXECUTION_FAILED:
        err = d.get("error") or {}
        where = f" at node {err.get('node_id')}" if err.get("node_id") else ""
        return f"{err.get('message')}{where}"
    if t is EventType.EXECUTION_STOPPED:
        return str(d.get("reason"))
    return _short(d) if d else ""


def render_line(event: Event) -> str:
    return f"{event.execution_id}  #{event.index:<3} {event.type.value:<20} {describe(event)}"
