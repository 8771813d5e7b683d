"""A stop sent to an execution whose worker was SIGKILLed, before any worker runs it again.

The dead worker wrote events the row does not count yet (a run records its stream's length only
when it ends), so the stop's `execution.stopped` must take its index from the stream itself:
written at the row's stale index it would be a duplicate, dropped, and the stream would never end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import flows
from tests.e2e.conftest import Mode, base_env, env, logs, mode  # noqa: F401
from tests.e2e.stack import TERMINAL, assert_contiguous, open_stack
from tests.faults.lifecycle import kill_holder, lease_ran_out, spawn_worker


@pytest.mark.timeout(90)
async def test_stop_of_a_requeued_execution_ends_its_stream_contiguously(
    env: dict[str, str],  # noqa: F811
    logs: Path,  # noqa: F811
    mode: Mode,  # noqa: F811
) -> None:
    async with open_stack(env, logs) as stack:
        api = stack.api
        await spawn_worker(stack, "doomed")
        ex = (await api.create(await api.create_flow(flows.long_delay(60_000))))["id"]
        await api.command(ex, "start")
        await api.node_event(ex, "node.started", "wait", timeout=30)
        await kill_holder(stack, ex)
        await lease_ran_out(stack, ex)
        if mode.track == "kafka":
            # What the recovery sweeper does: the execution goes back to `queued`, a new task
            # waits in Kafka, and no worker has taken it yet.
            report = await stack.factory.sweeper(stack.container).sweep()
            assert report.requeued == [ex]
            assert (await api.get(ex))["status"] == "queued"
        # (On DBOS the row stays `running` until a live worker recovers the workflow.)

        assert await api.command(ex, "stop", reason="operator stop") == 202
        await stack.add_worker()  # takes the re-delivery: skips it (Kafka) or obeys the stop
        row = await api.wait_status(ex, {"stopped", "completed", "failed"}, timeout=30)

        events = await api.events(ex, timeout=20)
        assert_contiguous(events)
        types = [e["type"] for e in events]
        assert types[-1] == "execution.stopped", types
        assert sum(t in TERMINAL for t in types) == 1
        assert events[-1]["data"]["reason"] == "operator stop"
        assert row["status"] == "stopped"
        assert row["error_message"] == "operator stop"
        assert row["next_event_index"] == len(events)
        assert (await api.get(ex))["status"] == "stopped"
