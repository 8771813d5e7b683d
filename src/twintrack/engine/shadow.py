"""Replay for shadow runs: side effects off by design.

A shadow run re-runs a completed execution on the other track to compare the two. Nodes whose
type declares `side_effects` (a tally's counter, an emit's child, a plugin calling out) must not
act twice, so the engine does not run them in a shadow: it replays what the original run
recorded for them (its outputs or error, and the `child.spawned` / `node.log` events it wrote),
the way Cadence's shadower replays history instead of calling the real workers. What was
replayed, and why, is kept in `replayed`. A side-effecting node the original never finished
has nothing to replay: it fails in the shadow, which then shows as a mismatch.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twintrack.domain.events import Event, EventType

#: the events of a node, besides started/completed/failed, that a replay writes again
_REPLAYED_TYPES = (EventType.CHILD_SPAWNED, EventType.NODE_LOG)


@dataclass(frozen=True)
class RecordedNode:
    """What the original run recorded for one node."""

    outputs: dict[str, Any] | None = None
    error: str | None = None
    events: tuple[tuple[EventType, dict[str, Any]], ...] = ()

    @property
    def finished(self) -> bool:
        return self.outputs is not None or self.error is not None


@dataclass
class ShadowReplay:
    """The recorded results of the original's side-effecting nodes, for one shadow run."""

    recorded: Mapping[str, RecordedNode]
    #: node id -> why it was not run (filled as the run goes)
    replayed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_events(cls, events: Iterable[Event], node_ids: Collection[str]) -> ShadowReplay:
        """From the original's stream: what each of `node_ids` produced."""
        found: dict[str, dict[str, Any]] = {n: {"events": []} for n in node_ids}
        for event in events:
            node_id = event.data.get("node_id")
            if node_id not in found:
                continue
            entry = found[node_id]
            if event.type is EventType.NODE_COMPLETED:
                entry["outputs"] = dict(event.data.get("outputs") or {})
            elif event.type is EventType.NODE_FAILED:
                entry["error"] = str(event.data.get("error") or "failed")
            elif event.type in _REPLAYED_TYPES:
                entry["events"].append((event.type, dict(event.data)))
        return cls(
            {
                n: RecordedNode(e.get("outputs"), e.get("error"), tuple(e["events"]))
                for n, e in found.items()
            }
        )


def replay_reason(type_name: str, recorded: RecordedNode | None) -> str:
    """Why a node did not run in a shadow (kept with the shadow run)."""
    if recorded is None or not recorded.finished:
        return (
            f"'{type_name}' has side effects and the original run has no result for it: "
            "not run, failed in the shadow"
        )
    return f"'{type_name}' has side effects: not run, the original's result replayed"
