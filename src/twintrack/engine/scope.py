"""Event scoping: which nodes an execution skips because of its trigger events."""

from __future__ import annotations

from collections.abc import Sequence

from twintrack.domain.execution import TriggerEvent
from twintrack.domain.flow import Flow


def scope_skips(flow: Flow, events: Sequence[TriggerEvent]) -> dict[str, str]:
    """Node id -> reason, for every node this execution must skip before anything runs.

    Without events, listen nodes and everything downstream of them are skipped. With events,
    only the regions of listen nodes whose event arrived run: a region is the listener, its
    downstream nodes, and everything upstream of those (the other inputs they need).
    """
    listeners: dict[str, str] = {}
    for node in flow.nodes.values():
        event = node.node_type.listens_to(node.config)
        if event is not None:
            listeners[node.id] = event
    skips: dict[str, str] = {}
    if not events:
        downstream = flow.downstream(set(listeners))
        for node_id in flow.nodes:
            if node_id in listeners:
                skips[node_id] = "listen node in an execution started without events"
            elif node_id in downstream:
                skips[node_id] = "downstream of a listen node in an execution without events"
        return skips
    received = {e.name for e in events}
    active: set[str] = set()
    for node_id, event in listeners.items():
        if event in received:
            below = flow.downstream({node_id})
            active |= {node_id} | below | flow.upstream(below)
    for node_id in flow.nodes:
        if node_id not in active:
            skips[node_id] = "outside the region of the listen nodes for the received events"
        elif node_id in listeners and listeners[node_id] not in received:
            skips[node_id] = f"event '{listeners[node_id]}' was not received"
    return skips
