"""Shadow runs and the scorecard (issue #12 items 3-4) on real servers, workers of both tracks:
with SHADOW_PERCENT=100 each completed execution is re-run on the other track with side effects
off (a tally counts once), hidden from its owner, and compared; a flow that behaves differently
per track lands in the mismatch ledger that `rollout mismatches` and the admin API show; and
`rollout report --json` shows the numbers, for the Kafka-routed and the DBOS-routed cohort.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import flows
from tests.e2e.stack import Stack, eventually, open_stack
from tests.e2e.test_rollout import run_cli
from twintrack.bootstrap import Container
from twintrack.core.shadow import MATCHED, MISMATCHED, ShadowRun
from twintrack.domain.shadow import shadow_execution_id
from twintrack.nodes.base import NodeConfig, NodeContext, NodeType

pytestmark = pytest.mark.integration


class SaysItsTrackConfig(NodeConfig):
    pass


class SaysItsTrack(NodeType):
    """A test-only plugin without side effects that answers the track it runs on: the same
    execution gives a different output on each track, a divergence a shadow must catch."""

    type_name = "says_its_track"
    config_model = SaysItsTrackConfig
    outputs = ("value",)
    side_effects = False

    def __init__(self, container: Container) -> None:
        self.container = container

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        return {"value": (await self.container.executions.get(ctx.execution_id)).track.value}


TALLY = flows.flow(
    "tally-once",
    [
        ("x", "const", {"value": 1}),
        ("count", "tally", {"name": "shadow-e2e"}),
        ("out", "output", {"name": "count"}),
    ],
    [("x.value", "count.value"), ("count.count", "out.value")],
)
DIVERGES = flows.flow(
    "diverges",
    [("t", "says_its_track", {}), ("out", "output", {"name": "track"})],
    [("t.value", "out.value")],
)


async def compared(stack: Stack, original_id: str) -> ShadowRun:
    async def probe() -> ShadowRun | None:
        run = await stack.container.shadow_store.get(original_id)
        return run if run is not None and run.status != "running" else None

    found: ShadowRun = await eventually(probe, timeout=60)
    return found


async def test_completed_executions_are_shadowed_on_the_other_track_and_compared(
    base_env: dict[str, str], logs: Path
) -> None:
    env = {
        **base_env,
        "SHADOW_PERCENT": "100",
        "SHADOW_INTERVAL_S": "0.2",
        "CLAIM_TTL_S": "15",  # no recovery re-run on a loaded machine
    }
    async with open_stack(env, logs) as stack:
        stack.container.registry.register(SaysItsTrack(stack.container))
        await stack.add_worker()  # both tracks, and the shadow sweep's leader
        api = stack.api
        tally_id, diverges_id = await api.create_flow(TALLY), await api.create_flow(DIVERGES)

        async def run(flow_id: str) -> dict[str, Any]:
            row = await api.create(flow_id)
            assert await api.command(row["id"], "start") == 202
            return await api.wait_status(row["id"], "completed", 30)

        rows = await asyncio.gather(run(tally_id), run(tally_id), run(diverges_id))
        assert {r["track"] for r in rows} == {"kafka"}
        tallies, divergent = rows[:2], rows[2]

        for row in tallies:
            shadow_run = await compared(stack, row["id"])
            assert shadow_run.status == MATCHED, shadow_run
            assert shadow_run.shadow_track.value == "dbos"
            assert "count" in shadow_run.replayed  # the tally was not run in the shadow
            shadow = await stack.container.executions.get(shadow_execution_id(row["id"]))
            assert (shadow.track.value, shadow.status.value) == ("dbos", "completed")
            assert shadow.outputs == row["outputs"]
        assert await stack.container.counters.get("shadow-e2e") == 2  # counted once each
        assert (await compared(stack, divergent["id"])).status == MISMATCHED

        # Invisible to the owner: not in the list, not readable.
        listed = await api.client.get("/v1/executions", headers=api.auth)
        assert {r["id"] for r in listed.json()["items"]} == {r["id"] for r in rows}
        hidden = await api.client.get(
            f"/v1/executions/{shadow_execution_id(rows[0]['id'])}", headers=api.auth
        )
        assert hidden.status_code == 404, hidden.text

        code, out = await run_cli(stack, "mismatches", "--json")
        assert code == 0, out
        (entry,) = json.loads(out)["mismatches"]
        assert (entry["original_id"], entry["shadow_id"]) == (
            divergent["id"],
            shadow_execution_id(divergent["id"]),
        )
        assert (entry["flow_id"], entry["flow_version"]) == (diverges_id, 1)
        assert '"dbos"' in entry["diff"]
        assert entry["original_events"][-1].split()[1] == "execution.completed"
        code, out = await run_cli(stack, "mismatches")
        assert code == 0, out
        assert divergent["id"] in out

        # One execution routed to DBOS: the other way round, shadowed on Kafka.
        admin = {"Authorization": f"Bearer {(await stack.container.keys.create('ops', True)).key}"}
        to_dbos = await api.client.put(
            "/v1/admin/rollout", json={"rollout_percent": 100, "reason": "dbos"}, headers=admin
        )
        assert to_dbos.status_code == 200, to_dbos.text
        on_dbos = await run(tally_id)
        assert on_dbos["track"] == "dbos"
        shadow_run = await compared(stack, on_dbos["id"])
        assert (shadow_run.status, shadow_run.shadow_track.value) == (MATCHED, "kafka")

        code, out = await run_cli(stack, "report", "--window", "1h", "--json")
        assert code == 0, out
        report_rows = {(r["track"], r["cohort"]): r for r in json.loads(out)["rows"]}
        kafka, dbos = report_rows["kafka", "routed"], report_rows["dbos", "routed"]
        assert (dbos["executions"], dbos["completed"], dbos["failed"]) == (1, 1, 0)
        assert (dbos["shadow_runs"], dbos["shadow_matches"], dbos["consistency_rate"]) == (1, 1, 1)
        assert dbos["error_rate"] == 0.0
        assert dbos["p50_s"] is not None
        assert report_rows["dbos", "all"]["executions"] == 1  # the shadows are not counted
        assert report_rows["dbos", "fallback"]["executions"] == 0
        assert (kafka["executions"], kafka["completed"], kafka["failed"]) == (3, 3, 0)
        assert (kafka["shadow_runs"], kafka["shadow_matches"]) == (3, 2)
        assert kafka["consistency_rate"] == pytest.approx(2 / 3)
        assert kafka["error_rate"] == 0.0
        assert kafka["p50_s"] is not None
        assert kafka["queue_p99_s"] is not None
        code, out = await run_cli(stack, "report")
        assert code == 0, out
        assert out.splitlines()[1].split()[:3] == ["TRACK", "COHORT", "EXECS"]

        # The admin API: the same ledger and scorecard, and the live percentage.
        ledger = await api.client.get("/v1/admin/shadow/mismatches", headers=admin)
        assert ledger.status_code == 200, ledger.text
        assert [m["original_id"] for m in ledger.json()["mismatches"]] == [divergent["id"]]
        refused = await api.client.get("/v1/admin/shadow/mismatches", headers=api.auth)
        assert refused.status_code == 403
        report = await api.client.get("/v1/admin/rollout/report?window=30m", headers=admin)
        assert report.status_code == 200, report.text
        assert report.json()["window_s"] == 1800
        off = await api.client.put(
            "/v1/admin/rollout", json={"shadow_percent": 0, "reason": "enough"}, headers=admin
        )
        assert off.status_code == 200, off.text
        assert off.json()["shadow_percent"] == 0
        code, out = await run_cli(
            stack, "set", "--shadow-percent", "50", "--reason", "half", "--by", "alice"
        )
        assert code == 0, out
        assert "shadow runs 50%" in out
