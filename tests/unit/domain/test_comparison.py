"""Normalizing and diffing event streams (twintrack.domain.comparison), and the comparison
catalog run
in-process by the engine alone: every flow is valid, does what its scenario expects, and runs
the same way twice."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest

from tests.comparison import catalog
from tests.comparison.catalog import Scenario, matches
from twintrack.domain.commands import Command
from twintrack.domain.comparison import (
    Aliases,
    Ordering,
    RunResult,
    compare_runs,
    diff_streams,
    normalize,
    stream_problems,
)
from twintrack.domain.events import Event
from twintrack.domain.execution import ExecutionOptions
from twintrack.domain.flow import check_options, parse_flow_json
from twintrack.engine import EngineServices, EventSequencer, ExecutionControl, run_flow
from twintrack.entrypoints.local import LocalRunner
from twintrack.nodes.registry import default_registry

ROOT = "ex_0189f3a2b4c5d6e7f8091a2b3c4d5e6f"
CHILD = "ex_0189f3a2b4c5d6e7f8091a2b3c4d5e70"
FLOW = "fl_0189f3a2b4c5d6e7f8091a2b3c4d5e6f"


def _event(index: int, type: str, data: dict[str, Any], ex: str = ROOT) -> dict[str, Any]:
    return {
        "execution_id": ex,
        "index": index,
        "type": type,
        "timestamp": f"2026-11-21T09:00:00.{index:06d}+00:00",
        "data": data,
    }


def stream(
    *,
    ex: str = ROOT,
    child: str = CHILD,
    flow: str = FLOW,
    track: str = "kafka",
    worker: str = "host-1-abc",
    answer: int = 42,
    duration: float = 1.5,
) -> list[dict[str, Any]]:
    """A root stream as a subscriber receives it: created .. completed, with one child."""
    return [
        _event(
            0,
            "execution.created",
            {
                "flow_id": flow,
                "flow_version": 1 if track == "kafka" else 3,
                "track": track,
                "events_backend": track,
                "depth": 0,
                "parent_id": None,
                "root_id": ex,
                "events": [],
            },
            ex,
        ),
        _event(1, "execution.queued", {"track": track}, ex),
        _event(2, "execution.started", {"attempt": 1, "worker_id": worker, "track": track}, ex),
        _event(3, "node.started", {"node_id": "x", "type": "const"}, ex),
        _event(4, "node.started", {"node_id": "y", "type": "emit"}, ex),
        _event(
            5,
            "node.completed",
            {"node_id": "x", "outputs": {"value": answer}, "duration_ms": duration},
            ex,
        ),
        _event(
            6,
            "child.spawned",
            {
                "node_id": "y",
                "child_execution_id": child,
                "flow_id": flow,
                "event": "go",
                "depth": 1,
            },
            ex,
        ),
        _event(7, "node.completed", {"node_id": "y", "outputs": {}, "duration_ms": 9.0}, ex),
        _event(8, "execution.completed", {"outputs": {"answer": answer}}, ex),
    ]


def child_stream(
    ex: str = CHILD, root: str = ROOT, flow: str = FLOW, track: str = "kafka"
) -> list[dict[str, Any]]:
    return [
        _event(
            0,
            "execution.created",
            {"flow_id": flow, "track": track, "depth": 1, "parent_id": root, "root_id": root},
            ex,
        ),
        _event(1, "execution.stopped", {"reason": f"ancestor {root} was stopped"}, ex),
    ]


def other_ids() -> dict[str, Any]:
    return {
        "ex": "ex_0199aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "child": "ex_0199bbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        "flow": "fl_0199cccccccccccccccccccccccccccc",
        "track": "dbos",
        "worker": "other-7-def",
        "duration": 0.25,
    }


# -- normalize ---------------------------------------------------------------------------------


def test_normalize_masks_ids_timestamps_durations_workers_tracks_and_versions() -> None:
    events = normalize(stream())
    created, queued, started = events[0], events[1], events[2]
    assert {e["execution_id"] for e in events} == {"<ex:0>"}
    assert {e["timestamp"] for e in events} == {"<timestamp>"}
    assert created["data"] == {
        "flow_id": "<flow:0>",
        "flow_version": "<version>",
        "track": "<track>",
        "events_backend": "<events_backend>",
        "depth": 0,
        "parent_id": None,
        "root_id": "<ex:0>",
        "events": [],
    }
    assert queued["data"] == {"track": "<track>"}
    assert started["data"] == {"attempt": 1, "worker_id": "<worker>", "track": "<track>"}
    assert events[5]["data"]["duration_ms"] == "<duration>"
    assert events[6]["data"]["child_execution_id"] == "<ex:1>"
    assert events[6]["data"]["flow_id"] == "<flow:0>"


def test_normalize_keeps_what_users_rely_on() -> None:
    events = normalize(stream())
    assert [e["index"] for e in events] == list(range(9))
    assert [e["type"] for e in events] == [e["type"] for e in stream()]
    assert events[3]["data"] == {"node_id": "x", "type": "const"}
    assert events[5]["data"]["outputs"] == {"value": 42}
    assert events[8]["data"] == {"outputs": {"answer": 42}}
    assert list(events[0]) == ["execution_id", "index", "type", "timestamp", "data"]


def test_runs_differing_only_in_what_is_masked_normalize_equal() -> None:
    assert normalize(stream()) == normalize(stream(**other_ids()))
    assert diff_streams(normalize(stream()), normalize(stream(**other_ids()))) == ""


def test_shared_aliases_keep_relations_across_a_tree_and_inside_messages() -> None:
    aliases = Aliases()
    root = normalize(stream(), aliases)
    child = normalize(child_stream(), aliases)
    assert root[6]["data"]["child_execution_id"] == child[0]["execution_id"] == "<ex:1>"
    assert child[0]["data"]["parent_id"] == child[0]["data"]["root_id"] == "<ex:0>"
    assert child[1]["data"]["reason"] == "ancestor <ex:0> was stopped"


def test_masking_is_by_value_so_a_missing_field_still_shows() -> None:
    a = stream()
    b = copy.deepcopy(a)
    del b[2]["data"]["worker_id"]
    assert "worker_id" in diff_streams(normalize(a), normalize(b))


def test_attempts_are_kept_unless_asked_to_mask_them() -> None:
    a, b = stream(), stream()
    b[2]["data"]["attempt"] = 2
    assert normalize(a) != normalize(b)
    assert normalize(a, mask_attempts=True) == normalize(b, mask_attempts=True)


def test_track_is_masked_only_in_execution_events() -> None:
    events = [_event(0, "node.completed", {"node_id": "n", "outputs": {"track": "kafka"}})]
    events[0]["data"]["track"] = "kafka"
    data = normalize(events)[0]["data"]
    assert data["track"] == "kafka"
    assert data["outputs"] == {"track": "kafka"}


# -- diffs -------------------------------------------------------------------------------------


def test_a_changed_output_shows_in_the_diff() -> None:
    diff = diff_streams(
        normalize(stream()), normalize(stream(answer=41, **other_ids())), ("kafka", "dbos")
    )
    assert diff.startswith("--- kafka\n+++ dbos")
    assert '-  5 node.completed {"duration_ms": "<duration>", "node_id": "x", "outputs": ' in diff
    assert '{"value": 42}}' in diff
    assert '{"value": 41}}' in diff
    assert '+  8 execution.completed {"outputs": {"answer": 41}}' in diff


def test_reordered_events_show_in_the_strict_diff_but_not_per_node() -> None:
    a = stream()
    b = copy.deepcopy(a)
    # x and y ran concurrently: y's events came first in b (indices renumbered in order).
    b[5], b[6], b[7] = b[6], b[7], b[5]
    for i, e in enumerate(b):
        e["index"] = i
    na, nb = normalize(a), normalize(b)
    strict = diff_streams(na, nb, ("a", "b"))
    assert "child.spawned" in strict
    assert '"node_id": "x"' in strict
    assert diff_streams(na, nb, ordering=Ordering.PER_NODE) == ""


def test_per_node_still_sees_a_changed_node_sequence_and_execution_order() -> None:
    a = stream()
    b = copy.deepcopy(a)
    b[3], b[5] = b[5], b[3]  # x completed before it started
    for i, e in enumerate(b):
        e["index"] = i
    diff = diff_streams(normalize(a), normalize(b), ordering=Ordering.PER_NODE)
    assert "[node x]" in diff
    c = copy.deepcopy(a)
    c[1], c[2] = c[2], c[1]
    for i, e in enumerate(c):
        e["index"] = i
    assert "[execution]" in diff_streams(normalize(a), normalize(c), ordering=Ordering.PER_NODE)


def test_stream_problems_names_gaps_duplicates_and_missing_terminals() -> None:
    assert stream_problems(stream()) == []
    gap = [e for e in stream() if e["index"] != 4]
    assert "indices are not" in stream_problems(gap)[0]
    assert stream_problems(stream()[:-1]) == ["expected exactly one terminal event, found 0"]
    duplicated = [*stream(), stream()[-1]]
    assert any("one terminal" in p for p in stream_problems(duplicated))


# -- compare_runs ------------------------------------------------------------------------------


def run(child_events: list[dict[str, Any]] | None = None, **overrides: Any) -> RunResult:
    """A run whose root spawned one child that was stopped."""
    events = stream(**overrides)
    if child_events is None:
        ids = {k: overrides[k] for k in ("ex", "flow", "track") if k in overrides}
        child_events = child_stream(
            events[6]["data"]["child_execution_id"], ids.pop("ex", ROOT), **ids
        )
    answer = events[-1]["data"]["outputs"]["answer"]
    return RunResult(
        status="completed", outputs={"answer": answer}, events=events, children=[child_events]
    )


def test_compare_runs_equal_across_modes() -> None:
    report = compare_runs({"kafka": run(), "dbos": run(**other_ids())})
    assert report.ok
    assert report.reference == "kafka"
    assert [m.mode for m in report.modes] == ["kafka", "dbos"]
    assert all(m.diff == "" for m in report.modes)


def test_compare_runs_reports_outputs_status_and_stream_differences_readably() -> None:
    different = run(answer=7, **other_ids())
    different = RunResult(
        status="failed",
        outputs=different.outputs,
        events=different.events,
        children=different.children,
        error_message="boom",
    )
    report = compare_runs({"kafka": run(), "dbos-streams": different})
    assert not report.ok
    mode = report.modes[1]
    assert (mode.status_equal, mode.outputs_equal, mode.error_equal, mode.streams_equal) == (
        False,
        False,
        False,
        False,
    )
    text = report.render()
    assert "dbos-streams   failed" in text
    assert "--- diff kafka -> dbos-streams ---" in text
    assert '-outputs: {"answer": 42}' in text
    assert '+outputs: {"answer": 7}' in text
    assert '+error: "boom"' in text


def test_compare_runs_compares_descendants_and_stream_guarantees() -> None:
    odd_child = child_stream(other_ids()["child"], other_ids()["ex"], other_ids()["flow"])
    odd_child[1]["data"]["reason"] = "something else"
    report = compare_runs({"kafka": run(), "dbos": run(child_events=odd_child, **other_ids())})
    assert not report.ok
    assert "== descendant 1 <ex:1>" in report.modes[1].diff
    assert '"reason": "something else"' in report.modes[1].diff
    broken = run()
    broken.events.pop(4)
    report = compare_runs({"kafka": run(), "dbos": broken})
    assert any("indices are not" in p for p in report.modes[1].problems)


def test_a_run_that_could_not_be_driven_is_reported() -> None:
    failed = RunResult(status="(not run)", failure="TimeoutError: ...")
    report = compare_runs({"kafka": run(), "dbos": failed})
    assert not report.ok
    assert "dbos: driving the run failed: TimeoutError: ..." in report.render()


# -- the catalog, run by the engine alone ------------------------------------------------------


def test_the_catalog_covers_the_issue() -> None:
    assert set(catalog.names()) >= {
        "linear",
        "diamond",
        "fan-out-50",
        "handled-error",
        "unhandled-error",
        "timeout",
        "children-depth-3",
        "debug-steps",
        "stop-midway",
    }
    fan_out = catalog.load("fan-out-50").flow
    assert sum(n["type"] == "math" for n in fan_out["nodes"]) == 50


async def _run_locally(scenario: Scenario) -> RunResult:
    """The scenario on the bare engine (children through the in-process runner)."""
    flow = parse_flow_json(json.dumps(scenario.flow).encode(), default_registry())
    options = ExecutionOptions(**scenario.options)
    check_options(flow, options)
    events: list[dict[str, Any]] = []
    changed = asyncio.Condition()

    async def publish(event: Event) -> None:
        async with changed:
            events.append(event.model_dump(mode="json"))
            changed.notify_all()

    if not scenario.script:
        everything: list[Event] = []

        async def collect(event: Event) -> None:
            everything.append(event)

        runner = LocalRunner(flow, collect, options=options)
        result = await runner.run()
        streams: dict[str, list[dict[str, Any]]] = {}
        for e in everything:
            streams.setdefault(e.execution_id, []).append(e.model_dump(mode="json"))
        assert runner.root_id is not None
        root = streams.pop(runner.root_id)
        children = list(streams.values())  # one per depth in the catalog: creation order
    else:
        control = ExecutionControl()
        sink = EventSequencer(ROOT, publish)
        running = asyncio.create_task(
            run_flow(
                flow,
                execution_id=ROOT,
                sink=sink,
                control=control,
                options=options,
                services=EngineServices(),
            )
        )
        position = -1
        for step in scenario.script:
            if "wait_for" in step:
                async with changed:
                    while not any(matches(e, step["wait_for"]) for e in events[position + 1 :]):
                        await changed.wait()
                    position = next(
                        i
                        for i in range(position + 1, len(events))
                        if matches(events[i], step["wait_for"])
                    )
            else:
                control.send(Command(step["command"]), step.get("reason"))
        result = await running
        root, children = events, []
    return RunResult(
        status=str(result.status),
        outputs=dict(result.outputs),
        events=root,
        children=children,
        error_message=result.error.message if result.error else None,
        error_node_id=result.error.node_id if result.error else None,
    )


@pytest.mark.parametrize("name", catalog.names())
async def test_catalog_flow_runs_as_expected_and_the_same_twice(name: str) -> None:
    scenario = catalog.load(name)
    first, second = await _run_locally(scenario), await _run_locally(scenario)
    expect = scenario.expect
    assert first.status == expect.status, first.events
    if expect.outputs is not None:
        assert first.outputs == expect.outputs
    if expect.error_node_id is not None:
        assert first.error_node_id == expect.error_node_id
    assert len(first.children) == expect.descendants
    report = compare_runs({"first": first, "second": second}, ordering=Ordering.STRICT)
    assert report.ok, report.render()
