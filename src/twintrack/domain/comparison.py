"""Compare runs of one flow across tracks: normalized event streams, statuses and outputs.

Pure functions over plain JSON (the event envelopes as subscribers receive
them, and execution rows as the API returns them), shared by the comparison suite
(`tests/comparison/`), `twintrack compare` and the shadow runs (core/shadow.py): one rule for
what counts as the same run.

Normalization
-------------
Two runs of the same flow with the same inputs and the same driving commands produce the same
stream, up to what legitimately differs between two executions and between two tracks.
`normalize` masks exactly that, and keeps everything else:

* **Execution ids** (``ex_`` + 32 hex digits) are replaced, wherever they occur — the
  ``execution_id`` of the envelope, ``child_execution_id``, ``parent_id``, ``root_id``, and
  inside any string such as the stop reason ``ancestor ex_… was stopped`` — by aliases
  ``<ex:0>``, ``<ex:1>``, … in order of first appearance. Relations survive: a child's
  ``parent_id`` is the alias of its parent when the tree is normalized with shared `Aliases`.
* **Flow ids** (``fl_`` + 32 hex digits) likewise become ``<flow:0>``, ``<flow:1>``, ….
* **Timestamps**: the envelope's ``timestamp`` becomes ``<timestamp>``.
* **Durations**: ``duration_ms`` in event data (``node.completed``, ``node.failed``) becomes
  ``<duration>``.
* **Workers**: ``worker_id`` in event data becomes ``<worker>``.
* **Flow versions**: ``flow_version`` in event data becomes ``<version>``.
* **Track and events backend**: ``track`` and ``events_backend`` in the data of
  ``execution.*`` events (created, queued, started, retrying, ...) become ``<track>`` and
  ``<events_backend>``: they are *meant* to differ between the modes being compared.
* **Attempts** are kept (a retry is a real difference; it also shows as
  ``execution.retrying``) unless ``mask_attempts=True``, which turns ``attempt`` into
  ``<attempt>`` for comparing runs where a crash was deliberate.

A masked key keeps its place (only its value is replaced, and only when it is not null), so a
field present in one run and absent in the other still shows. Kept as they are: event types
and their order, ``index``, node ids and node types, outputs, error messages, ``handled``,
skip and stop reasons, ``cancelled_nodes``, pause reasons, breakpoints, trigger events and
payloads, depths, and every key of the data.

Ordering
--------
The engine starts ready nodes in declaration order and reports a batch of finished nodes in
declaration order, so streams of the catalog flows are meant to be identical event for event
(`Ordering.STRICT`). Nodes that run *concurrently* and take real time (delays, tallies, emits
under ``max_concurrency`` > 1) may legitimately finish in a different order from run to run,
which interleaves their events differently. `Ordering.PER_NODE` compares such streams
robustly: the subsequence of execution-level events (``execution.*``, a pause at a
breakpoint included) and, for each node id, the subsequence of that node's events
(``node.*``, ``debug.breakpoint``, ``child.spawned``) — all without ``index``, which the
interleaving changes. Every event
belongs to exactly one of these subsequences, so equal views also mean equal multisets of
events. What PER_NODE cannot see is the position of execution-level events (a pause, say)
relative to node events: flows that test debugging use STRICT. Independently of the
ordering, `stream_problems` checks each raw stream against the stream guarantee (indices
0..n-1 in order, one terminal event, last).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

TERMINAL_TYPES = frozenset({"execution.completed", "execution.failed", "execution.stopped"})

EXECUTION_ID_RE = re.compile(r"\bex_[0-9a-f]{32}\b")
FLOW_ID_RE = re.compile(r"\bfl_[0-9a-f]{32}\b")

#: data keys masked in every event, with their placeholder
MASKED_DATA_KEYS: Mapping[str, str] = {
    "duration_ms": "<duration>",
    "worker_id": "<worker>",
    "flow_version": "<version>",
}
#: data keys masked in the data of execution-level (`execution.*`) events only
MASKED_EXECUTION_KEYS: Mapping[str, str] = {
    "track": "<track>",
    "events_backend": "<events_backend>",
}


class Ordering(StrEnum):
    """How strictly two normalized streams must agree (see the module docstring)."""

    STRICT = "strict"
    PER_NODE = "per_node"


@dataclass
class Aliases:
    """Stable placeholders for execution and flow ids, shared across the streams of a tree."""

    executions: dict[str, str] = field(default_factory=dict)
    flows: dict[str, str] = field(default_factory=dict)

    def execution(self, execution_id: str) -> str:
        return self.executions.setdefault(execution_id, f"<ex:{len(self.executions)}>")

    def flow(self, flow_id: str) -> str:
        return self.flows.setdefault(flow_id, f"<flow:{len(self.flows)}>")

    def text(self, value: str) -> str:
        """`value` with every execution and flow id in it replaced by its alias."""
        value = EXECUTION_ID_RE.sub(lambda m: self.execution(m.group(0)), value)
        return FLOW_ID_RE.sub(lambda m: self.flow(m.group(0)), value)

    def value(self, value: Any) -> Any:
        """A JSON value with ids aliased in every string, keys visited in sorted order."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            aliased = {k: self.value(value[k]) for k in sorted(value)}
            return {k: aliased[k] for k in value}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


def normalize_event(
    event: Mapping[str, Any], aliases: Aliases, *, mask_attempts: bool = False
) -> dict[str, Any]:
    """One envelope, normalized (see the module docstring); keys keep their order."""
    out: dict[str, Any] = {}
    event_type = str(event.get("type", ""))
    for key, value in event.items():
        if key == "execution_id" and isinstance(value, str):
            out[key] = aliases.execution(value)
        elif key == "timestamp" and value is not None:
            out[key] = "<timestamp>"
        elif key == "data" and isinstance(value, Mapping):
            out[key] = _normalize_data(event_type, value, aliases, mask_attempts)
        else:
            out[key] = aliases.value(value)
    return out


def _normalize_data(
    event_type: str, data: Mapping[str, Any], aliases: Aliases, mask_attempts: bool
) -> dict[str, Any]:
    masks = dict(MASKED_DATA_KEYS)
    if event_type.startswith("execution."):
        masks.update(MASKED_EXECUTION_KEYS)
    if mask_attempts:
        masks["attempt"] = "<attempt>"
    aliased = aliases.value({k: v for k, v in data.items() if k not in masks})
    return {
        k: (masks[k] if v is not None else None) if k in masks else aliased[k]
        for k, v in data.items()
    }


def normalize(
    events: Iterable[Mapping[str, Any]],
    aliases: Aliases | None = None,
    *,
    mask_attempts: bool = False,
) -> list[dict[str, Any]]:
    """The stream with what legitimately differs between runs and tracks masked.

    Exactly what is masked, and what is kept, is listed in this module's docstring.

    Pass one `Aliases` to every stream of a tree (root first, then descendants in spawn order)
    so ids keep their relations across streams; without it each stream gets its own aliases.
    """
    aliases = Aliases() if aliases is None else aliases
    return [normalize_event(e, aliases, mask_attempts=mask_attempts) for e in events]


def stream_problems(events: Sequence[Mapping[str, Any]]) -> list[str]:
    """Departures of one raw stream from the stream guarantee (every index once, in order,
    one terminal event, last); empty when it holds."""
    problems: list[str] = []
    indices = [e.get("index") for e in events]
    if indices != list(range(len(events))):
        problems.append(f"indices are not 0..{len(events) - 1} in order: {indices}")
    terminals = [i for i, e in enumerate(events) if e.get("type") in TERMINAL_TYPES]
    if len(terminals) != 1:
        problems.append(f"expected exactly one terminal event, found {len(terminals)}")
    elif terminals[0] != len(events) - 1:
        problems.append("the terminal event is not the last one")
    ids = {e.get("execution_id") for e in events}
    if len(ids) > 1:
        problems.append(f"events of several executions in one stream: {sorted(map(str, ids))}")
    return problems


def view(events: Sequence[Mapping[str, Any]], ordering: Ordering = Ordering.STRICT) -> list[str]:
    """Normalized events as comparable text lines, one per event, under `ordering`.

    STRICT: the events in stream order. PER_NODE: the execution-level events in order, then
    each node's events in order, nodes sorted by id, each line prefixed by its group, and
    without `index` (see the module docstring).
    """
    if ordering is Ordering.STRICT:
        return [_line(e) for e in events]
    groups: dict[str, list[str]] = {}
    execution_level: list[str] = []
    for event in events:
        node_id = _node_id(event)
        line = _line({k: v for k, v in event.items() if k != "index"})
        if node_id is None:
            execution_level.append(f"[execution] {line}")
        else:
            groups.setdefault(node_id, []).append(f"[node {node_id}] {line}")
    return execution_level + [line for node in sorted(groups) for line in groups[node]]


def _node_id(event: Mapping[str, Any]) -> str | None:
    """The node an event belongs to; None for execution-level (`execution.*`) events."""
    data = event.get("data")
    if str(event.get("type", "")).startswith("execution."):
        return None
    if isinstance(data, Mapping) and isinstance(data.get("node_id"), str):
        return str(data["node_id"])
    return None


def _line(event: Mapping[str, Any]) -> str:
    """`index type {data}`, the masked envelope fields left out (they are all equal)."""
    index = event.get("index")
    head = f"{index:>3} " if isinstance(index, int) else ""
    rest = {
        k: v
        for k, v in event.items()
        if k not in {"index", "type", "data", "timestamp", "execution_id"}
    }
    extra = f" {_json(rest)}" if rest else ""
    return f"{head}{event.get('type')} {_json(event.get('data', {}))}{extra}"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(", ", ": "), default=str)


def diff_lines(a: Sequence[str], b: Sequence[str], labels: tuple[str, str] = ("a", "b")) -> str:
    """A unified diff of two line lists; empty when they are equal."""
    if list(a) == list(b):
        return ""
    return "\n".join(
        difflib.unified_diff(list(a), list(b), fromfile=labels[0], tofile=labels[1], lineterm="")
    )


def diff_streams(
    a: Sequence[Mapping[str, Any]],
    b: Sequence[Mapping[str, Any]],
    labels: tuple[str, str] = ("a", "b"),
    ordering: Ordering = Ordering.STRICT,
) -> str:
    """A readable unified diff of two *normalized* streams; empty when they are equal."""
    return diff_lines(view(a, ordering), view(b, ordering), labels)


# -- runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """One run of a flow on one mode: the root's final row, its stream, its descendants'."""

    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: the descendants' streams, breadth first, each execution's children in spawn order
    children: list[list[dict[str, Any]]] = field(default_factory=list)
    error_message: str | None = None
    error_node_id: str | None = None
    #: what went wrong driving the run (a timeout, an unexpected answer), if anything
    failure: str | None = None

    @classmethod
    def from_row(
        cls,
        row: Mapping[str, Any],
        events: list[dict[str, Any]],
        children: list[list[dict[str, Any]]] | None = None,
    ) -> RunResult:
        """From an execution row as `GET /v1/executions/{id}` returns it."""
        return cls(
            status=str(row["status"]),
            outputs=dict(row.get("outputs") or {}),
            events=events,
            children=children or [],
            error_message=row.get("error_message"),
            error_node_id=row.get("error_node_id"),
        )

    def streams(self) -> list[list[dict[str, Any]]]:
        return [self.events, *self.children]


def tree_lines(run: RunResult, ordering: Ordering = Ordering.STRICT) -> list[str]:
    """Every stream of the run normalized with shared aliases, as one list of lines."""
    aliases = Aliases()
    lines: list[str] = []
    for number, stream in enumerate(run.streams()):
        normalized = normalize(stream, aliases)
        name = normalized[0]["execution_id"] if normalized else "?"
        title = "root" if number == 0 else f"descendant {number}"
        lines.append(f"== {title} {name} ({len(normalized)} events)")
        lines.extend(view(normalized, ordering))
    return lines


def summary_lines(run: RunResult) -> list[str]:
    """The run's final row, ids aliased as in its streams."""
    aliases = Aliases()
    for stream in run.streams():
        normalize(stream, aliases)
    return [
        f"status: {run.status}",
        f"outputs: {_json(aliases.value(run.outputs))}",
        f"error: {_json(aliases.value(run.error_message))} at node {_json(run.error_node_id)}",
    ]


@dataclass(frozen=True)
class ModeComparison:
    """One mode against the reference mode."""

    mode: str
    status: str
    status_equal: bool
    outputs_equal: bool
    error_equal: bool
    streams_equal: bool
    #: stream guarantee violations and driving failures of this mode's run
    problems: list[str]
    #: unified diff, reference first; empty when everything is equal
    diff: str

    @property
    def ok(self) -> bool:
        return (
            self.status_equal
            and self.outputs_equal
            and self.error_equal
            and self.streams_equal
            and not self.problems
        )


@dataclass(frozen=True)
class Report:
    reference: str
    ordering: Ordering
    modes: list[ModeComparison]

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.modes)

    def render(self) -> str:
        """A table of the modes, then every problem and diff; what a failing check prints."""
        rows = [
            f"reference: {self.reference}; ordering: {self.ordering}",
            f"{'mode':<14} {'status':<10} {'status=':<8} {'outputs=':<9} "
            f"{'error=':<7} {'events=':<8}",
        ]
        for m in self.modes:
            rows.append(
                f"{m.mode:<14} {m.status:<10} {_yes(m.status_equal):<8} "
                f"{_yes(m.outputs_equal):<9} {_yes(m.error_equal):<7} {_yes(m.streams_equal):<8}"
            )
        for m in self.modes:
            rows.extend(f"{m.mode}: {p}" for p in m.problems)
            if m.diff:
                rows.append(f"--- diff {self.reference} -> {m.mode} ---")
                rows.append(m.diff)
        return "\n".join(rows)


def _yes(value: bool) -> str:
    return "yes" if value else "NO"


def compare_runs(
    runs: Mapping[str, RunResult],
    *,
    reference: str | None = None,
    ordering: Ordering = Ordering.STRICT,
) -> Report:
    """Compare every mode's run against the reference mode's (default: the first one)."""
    if not runs:
        raise ValueError("no runs to compare")
    reference = next(iter(runs)) if reference is None else reference
    if reference not in runs:
        raise ValueError(f"reference mode {reference!r} has no run")
    ref = runs[reference]
    ref_summary, ref_tree = summary_lines(ref), tree_lines(ref, ordering)
    modes: list[ModeComparison] = []
    for mode, run in runs.items():
        problems = [f"driving the run failed: {run.failure}"] if run.failure else []
        for number, stream in enumerate(run.streams()):
            where = "root stream" if number == 0 else f"descendant {number}'s stream"
            problems.extend(f"{where}: {p}" for p in stream_problems(stream))
        summary, tree = summary_lines(run), tree_lines(run, ordering)
        labels = (reference, mode)
        diff = "\n".join(
            d
            for d in (diff_lines(ref_summary, summary, labels), diff_lines(ref_tree, tree, labels))
            if d
        )
        modes.append(
            ModeComparison(
                mode=mode,
                status=run.status,
                status_equal=run.status == ref.status,
                outputs_equal=summary[1] == ref_summary[1],
                error_equal=summary[2] == ref_summary[2],
                streams_equal=tree == ref_tree,
                problems=problems,
                diff=diff,
            )
        )
    return Report(reference, ordering, modes)
