"""The flows the measurements run (the 3-node flow is the one the e2e tests share)."""

from __future__ import annotations

from typing import Any

from tests.e2e.flows import chain, flow, long_delay, three_nodes

__all__ = ["chain", "child_flow", "fan_out", "long_delay", "three_nodes"]

CHILD_EVENT = "go"


def child_flow() -> dict[str, Any]:
    """What each spawned child runs: take the event's payload and store it. Two nodes."""
    return flow(
        "child",
        [("on_go", "listen", {"event": CHILD_EVENT}), ("got", "output", {"name": "payload"})],
        [("on_go.payload", "got.value")],
    )


def fan_out(children: int, child_flow_id: str) -> dict[str, Any]:
    """One const feeding `children` emit nodes, each spawning one child of `child_flow_id`."""
    emits = [
        (f"emit{i}", "emit", {"event": CHILD_EVENT, "flow_id": child_flow_id})
        for i in range(children)
    ]
    return flow(
        f"fan-out-{children}",
        [("seed", "const", {"value": 1}), *emits],
        [("seed.value", f"emit{i}.payload") for i in range(children)],
    )
