"""Rollout and rollback (DESIGN §1.7) on a real deployment: children keep their parent's track
whatever the flag says, `rollout status` tells when a track is drained, and `rollout reroute`
moves unstarted work to the other track while workers of both tracks run — each execution
exactly once, none lost, none moved twice.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from tests.e2e import flows
from tests.e2e.stack import Stack, assert_contiguous, open_stack
from twintrack.core.audit import AuditTrail
from twintrack.core.recovery_ports import RerouteStore
from twintrack.core.rollout import (
    FINISHED,
    LEFT_DBOS,
    ON_TRACK,
    REROUTED,
    RUNNING,
    RerouteReport,
    reroute,
    rollout_status,
)
from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.entrypoints.cli.rollout import rollout_app

pytestmark = pytest.mark.integration

_S = ExecutionStatus


def parent_then_child(wait_ms: int) -> dict[str, Any]:
    """The parent waits, then emits once; the child (started by the event) outputs the payload."""
    return flows.flow(
        "parent-then-child",
        [
            ("seed", "const", {"value": 7}),
            ("wait", "delay", {"ms": wait_ms}),
            ("spawn", "emit", {"event": "go"}),
            ("on_go", "listen", {"event": "go"}),
            ("got", "output", {"name": "payload"}),
        ],
        [
            ("seed.value", "wait.value"),
            ("wait.value", "spawn.payload"),
            ("on_go.payload", "got.value"),
        ],
    )


def fast_and_counted() -> dict[str, Any]:
    return flows.crashable(ms=20)


def stores(stack: Stack) -> tuple[RerouteStore, AuditTrail]:
    """What `reroute` moves executions with besides the service: the deployment's own."""
    return stack.container.reroutes, stack.container.audit


async def rerouted_rows(stack: Stack) -> dict[str, list[str]]:
    """Audit rows of reroutes: execution id -> the tracks it was moved to, in order."""
    async with stack.container.sessions() as session:
        rows = await session.execute(
            text(
                "SELECT execution_id, track FROM execution_recoveries WHERE reason = :r ORDER BY id"
            ).bindparams(r=REROUTED)
        )
        moves: dict[str, list[str]] = {}
        for execution_id, track in rows:
            moves.setdefault(execution_id, []).append(track)
    return moves


async def run_cli(stack: Stack, *args: str) -> tuple[int, str]:
    """`twintrack rollout ARGS` with the deployment's environment, as an operator runs it.

    In a thread: the command runs its own event loop (asyncio.run). Its stdout only: logs go to
    stderr, which Click's `output` would mix in."""
    runner = CliRunner()
    result = await asyncio.to_thread(runner.invoke, rollout_app, list(args), env=stack.env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


async def finish_all(stack: Stack, ids: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    rows = await asyncio.gather(
        *(stack.api.wait_status(ex, {"completed", "failed", "stopped"}, timeout) for ex in ids)
    )
    assert [r["status"] for r in rows] == ["completed"] * len(ids), rows
    return list(rows)


async def started_on(stack: Stack, ex: str) -> str:
    """The track the run reported in `execution.started` (asserting the stream on the way)."""
    events = await stack.api.events(ex)
    assert_contiguous(events)
    (started,) = [e for e in events if e["type"] == "execution.started"]
    return str(started["data"]["track"])


# -- children and the flag --------------------------------------------------------------------


@pytest.mark.parametrize("events_backend", ["kafka", "dbos"])
async def test_children_inherit_the_parent_track_after_the_flag_flips(
    base_env: dict[str, str], logs: Path, events_backend: str
) -> None:
    env = {
        **base_env,
        "ENABLE_DBOS_EXECUTION": "true",
        "EXECUTION_EVENTS_BACKEND": events_backend,
    }
    async with open_stack(env, logs) as stack:
        await stack.add_worker()
        service, api = stack.container.service, stack.api
        flow_id = await api.create_flow(parent_then_child(wait_ms=600))
        parent = await api.create(flow_id)
        not_yet_started = await api.create(flow_id)
        assert parent["track"] == not_yet_started["track"] == "dbos"
        await api.command(parent["id"], "start")
        await api.node_event(parent["id"], "node.started", "wait", timeout=20)

        # The operator rolls back: a 0% cohort overrides ENABLE_DBOS_EXECUTION=true.
        service.policy = replace(service.policy, enable_dbos=True, rollout_percent=0)
        new_root = await api.create(flow_id)
        assert (new_root["track"], new_root["events_backend"]) == ("kafka", "kafka")
        await api.command(not_yet_started["id"], "start")

        await finish_all(stack, [parent["id"], not_yet_started["id"]])
        for root in (parent, not_yet_started):
            tree = await api.tree(root["id"])
            members = tree["executions"]
            assert len(members) == 2, members  # the root and its one child
            child = members[1]
            assert child["parent_id"] == root["id"]
            assert (child["track"], child["events_backend"]) == ("dbos", events_backend)
            row = await api.wait_status(child["id"], "completed", timeout=20)
            assert row["outputs"] == {"payload": 7}
            assert await started_on(stack, child["id"]) == "dbos"
            assert await started_on(stack, root["id"]) == "dbos"


# -- status, and the CLI -------------------------------------------------------------------------


async def test_status_shows_each_track_draining_and_the_cli_reroutes_with_a_dry_run_first(
    base_env: dict[str, str], logs: Path
) -> None:
    async with open_stack(base_env, logs) as stack:  # no worker yet: nothing runs
        service, api = stack.container.service, stack.api
        flow_id = await api.create_flow(fast_and_counted())
        on_kafka = [(await api.create(flow_id))["id"] for _ in range(3)]
        service.policy = replace(service.policy, enable_dbos=True)
        on_dbos = [(await api.create(flow_id))["id"] for _ in range(4)]
        service.policy = replace(service.policy, enable_dbos=False)
        await api.command(on_kafka[0], "start")
        await api.command(on_dbos[0], "start")

        status = await rollout_status(stack.container.reroutes)
        kafka, dbos = status.tracks[Track.KAFKA], status.tracks[Track.DBOS]
        assert (kafka.counts[_S.CREATED], kafka.counts[_S.QUEUED]) == (2, 1)
        assert (dbos.counts[_S.CREATED], dbos.counts[_S.QUEUED]) == (3, 1)
        assert kafka.counts[_S.COMPLETED] == dbos.counts[_S.COMPLETED] == 0
        assert not kafka.drained
        assert not dbos.drained
        assert kafka.oldest_unfinished_age_s is not None
        assert dbos.oldest_unfinished_age_s is not None
        assert kafka.oldest_unfinished_age_s >= dbos.oldest_unfinished_age_s >= 0

        code, out = await run_cli(stack, "status", "--json")
        assert code == 0, out
        shown = json.loads(out)
        assert shown["tracks"]["dbos"]["counts"]["created"] == 3
        assert shown["tracks"]["dbos"]["drained"] is False
        code, out = await run_cli(stack, "status")
        assert code == 0, out
        assert out.splitlines()[0].split()[:3] == ["TRACK", "CREATED", "QUEUED"]

        # Roll back: without --yes, a dry run that changes nothing ...
        code, out = await run_cli(stack, "reroute", "--to", "kafka")
        assert code == 0, out
        assert "dry run: 4 execution(s) would move from dbos to kafka" in out
        assert all(ex in out for ex in on_dbos)
        assert await rerouted_rows(stack) == {}
        assert (await service.get(None, on_dbos[0])).track is Track.DBOS
        # ... then for real.
        code, out = await run_cli(stack, "reroute", "--to", "kafka", "--yes", "--json")
        assert code == 0, out
        report = json.loads(out)
        assert sorted(m["id"] for m in report["moved"]) == sorted(on_dbos)
        assert report["failed"] == report["skipped"] == []

        status = await rollout_status(stack.container.reroutes)
        assert status.tracks[Track.DBOS].drained
        assert status.tracks[Track.DBOS].oldest_unfinished_age_s is None
        assert status.tracks[Track.KAFKA].counts[_S.CREATED] == 5
        assert status.tracks[Track.KAFKA].counts[_S.QUEUED] == 2

        await stack.add_worker()
        for ex in on_kafka + on_dbos:
            await api.command(ex, "start")
        rows = await finish_all(stack, on_kafka + on_dbos)
        assert {r["track"] for r in rows} == {"kafka"}
        assert await stack.container.counters.get("after") == 7

        status = await rollout_status(stack.container.reroutes)
        assert status.tracks[Track.KAFKA].drained
        assert status.tracks[Track.KAFKA].counts[_S.COMPLETED] == 7
        assert status.tracks[Track.DBOS].counts[_S.COMPLETED] == 0
        unfinished_only = await rollout_status(stack.container.reroutes, include_finished=False)
        assert _S.COMPLETED not in unfinished_only.tracks[Track.KAFKA].counts


# -- reroute under load -------------------------------------------------------------------------


def moved_ids(report: RerouteReport) -> set[str]:
    return {m.execution_id for m in report.moved}


@pytest.mark.parametrize("events_backend", ["kafka", "dbos"])
async def test_reroute_to_kafka_while_workers_of_both_tracks_run_moves_each_once(
    base_env: dict[str, str], logs: Path, events_backend: str
) -> None:
    env = {
        **base_env,
        "ENABLE_DBOS_EXECUTION": "true",
        "EXECUTION_EVENTS_BACKEND": events_backend,
        # two DBOS slots, which two slow executions hold while the rest wait in the queue
        "DBOS_QUEUE_CONCURRENCY": "2",
        "DBOS_WORKER_CONCURRENCY": "2",
    }
    async with open_stack(env, logs) as stack:
        service, api = stack.container.service, stack.api
        slow_flow = await api.create_flow(flows.crashable(ms=3000))
        fast_flow = await api.create_flow(fast_and_counted())
        blockers = [(await api.create(slow_flow))["id"] for _ in range(2)]
        for ex in blockers:
            await api.command(ex, "start")
        queued = [(await api.create(fast_flow))["id"] for _ in range(12)]
        for ex in queued:
            await api.command(ex, "start")
        created = [(await api.create(fast_flow))["id"] for _ in range(12)]
        everything = blockers + queued + created

        await stack.add_worker()  # serves both tracks
        for ex in blockers:
            await api.wait_status(ex, "running", timeout=20)

        # Two operators reroute at once, while the worker takes work on both tracks.
        first, second = await asyncio.gather(
            reroute(service, *stores(stack), to=Track.KAFKA, include_dbos_streams=True),
            reroute(
                service, *stores(stack), to=Track.KAFKA, include_dbos_streams=True, concurrency=3
            ),
        )
        moved = moved_ids(first) | moved_ids(second)
        assert not moved_ids(first) & moved_ids(second)  # nothing moved twice
        assert first.failed == []
        assert second.failed == []
        for report in (first, second):
            assert {s.reason for s in report.skipped} <= {ON_TRACK, RUNNING, FINISHED}
        assert set(created) <= moved  # nobody starts those: every one moves
        assert moved & set(queued)  # the slots were held: queued ones moved too
        assert not moved & set(blockers)

        for ex in created:
            await api.command(ex, "start")
        rows = {r["id"]: r for r in await finish_all(stack, everything)}
        for ex in everything:
            expected = "kafka" if ex in moved else "dbos"
            assert rows[ex]["track"] == expected, ex
            assert rows[ex]["events_backend"] == events_backend  # fixed at creation
            assert rows[ex]["attempt"] == 1, rows[ex]
            assert await started_on(stack, ex) == expected
        # each ran exactly once: one tally before and one after per execution
        assert await stack.container.counters.get("before") == len(everything)
        assert await stack.container.counters.get("after") == len(everything)
        # one audit row per move, to the new track
        assert await rerouted_rows(stack) == {ex: ["kafka"] for ex in moved}

        again = await reroute(service, *stores(stack), to=Track.KAFKA, include_dbos_streams=True)
        assert again.moved == []
        assert again.skipped == []


async def test_reroute_to_dbos_skips_stale_kafka_tasks_and_keeps_spent_workflows_on_kafka(
    base_env: dict[str, str], logs: Path
) -> None:
    async with open_stack(base_env, logs) as stack:  # routing to Kafka, no worker yet
        service, api = stack.container.service, stack.api
        flow_id = await api.create_flow(fast_and_counted())
        queued = [(await api.create(flow_id))["id"] for _ in range(5)]
        for ex in queued:  # their Kafka tasks are in the topic now
            await api.command(ex, "start")
        created = [(await api.create(flow_id))["id"] for _ in range(5)]

        # One that went DBOS -> Kafka (queued: its DBOS workflow was made, then cancelled)
        # must not go back: DBOS would never run that workflow id again.
        service.policy = replace(service.policy, enable_dbos=True)
        round_trip = (await api.create(flow_id))["id"]
        service.policy = replace(service.policy, enable_dbos=False)
        await api.command(round_trip, "start")
        back = await reroute(service, *stores(stack), to=Track.KAFKA)
        assert moved_ids(back) == {round_trip}

        report = await reroute(service, *stores(stack), to=Track.DBOS)
        assert moved_ids(report) == set(queued + created)
        assert report.held_back == {LEFT_DBOS: 1}
        assert report.failed == []
        assert report.skipped == []

        await stack.add_worker()
        for ex in created:
            await api.command(ex, "start")
        everything = [*queued, *created, round_trip]
        rows = {r["id"]: r for r in await finish_all(stack, everything)}
        for ex in queued + created:
            assert (rows[ex]["track"], rows[ex]["attempt"]) == ("dbos", 1)
            assert await started_on(stack, ex) == "dbos"
        assert (rows[round_trip]["track"], rows[round_trip]["attempt"]) == ("kafka", 1)
        assert await started_on(stack, round_trip) == "kafka"
        assert await stack.container.counters.get("after") == len(everything)
        audit = await rerouted_rows(stack)
        assert audit == {round_trip: ["kafka"], **{ex: ["dbos"] for ex in queued + created}}


async def test_a_live_reader_of_a_rerouted_dbos_streams_execution_sees_the_whole_stream(
    base_env: dict[str, str], logs: Path
) -> None:
    env = {**base_env, "ENABLE_DBOS_EXECUTION": "true", "EXECUTION_EVENTS_BACKEND": "dbos"}
    async with open_stack(env, logs) as stack:
        service, api = stack.container.service, stack.api
        ex = (await api.create(await api.create_flow(fast_and_counted())))["id"]
        watching = api.watch(ex)
        report = await reroute(service, *stores(stack), to=Track.KAFKA, include_dbos_streams=True)
        assert moved_ids(report) == {ex}
        await asyncio.sleep(1.5)  # longer than DBOS's stream polling interval
        await stack.add_worker()
        await api.command(ex, "start")
        await api.wait_status(ex, "completed", timeout=20)
        assert await started_on(stack, ex) == "kafka"  # read after the end: complete
        assert_contiguous(await watching)  # read live: ends early
