"""Kafka fallback at admission and bulk actions by filter (issue #12 items 5-6) on real
servers, with a worker serving both tracks.

DBOS admission is broken for real in the test's own database — DBOS's system schema set one
migration behind, then one of its tables renamed away — while Kafka keeps working: executions
the rollout routes to DBOS are created on Kafka with their `fallback_reason` and complete there;
with the fallback switched off (live) the create is a clear 503. Bulk stop and reroute select by
filter, answer per id, and a replayed operation id acts on nothing twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from tests.e2e import flows
from tests.e2e.stack import Stack, assert_contiguous, open_stack
from tests.e2e.test_rollout import run_cli
from twintrack.entrypoints.cli.executions import executions_app
from twintrack.observability.metrics import REGISTRY

pytestmark = pytest.mark.integration

_DONE = {"completed", "failed", "stopped"}


async def sql(stack: Stack, *statements: str) -> None:
    async with stack.container.db_engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))


def fallbacks(cause: str) -> float:
    value = REGISTRY.get_sample_value(
        "twintrack_admission_refusals_total",
        {"track": "dbos", "cause": cause, "outcome": "fallback"},
    )
    return value or 0.0


async def admin(stack: Stack) -> dict[str, str]:
    """An admin key of the stack's own owner: it reads that owner's executions too."""
    key = (await stack.container.keys.create("team-a", admin=True)).key
    return {"Authorization": f"Bearer {key}"}


async def created_on(stack: Stack, flow_id: str) -> dict[str, Any]:
    """Create and start one execution as the application does; its row once it ended."""
    made = await stack.api.create(flow_id)
    assert await stack.api.command(made["id"], "start") == 202
    return await stack.api.wait_status(made["id"], _DONE, 60)


@pytest.mark.timeout(120)
async def test_executions_routed_to_a_dbos_that_cannot_admit_them_run_on_kafka(
    base_env: dict[str, str], logs: Path
) -> None:
    env = {
        **base_env,
        "ENABLE_DBOS_EXECUTION": "true",
        "DBOS_FALLBACK_TO_KAFKA": "true",
        "DBOS_ADMISSION_CACHE_S": "0",  # each create checks: the break is seen at once
        # The cause under test is the schema, not the wait: a loaded CI machine once took the
        # default 2 s for one check and the refusal said "timeout".
        "DBOS_ADMISSION_TIMEOUT_S": "15",
    }
    async with open_stack(env, logs) as stack:
        await stack.add_worker()  # serves both tracks
        api, auth = stack.api, await admin(stack)
        flow_id = await api.create_flow(flows.crashable(ms=10))

        healthy = await created_on(stack, flow_id)
        assert (healthy["status"], healthy["track"], healthy["fallback_reason"]) == (
            "completed",
            "dbos",
            None,
        )

        # DBOS's system schema one migration behind this release (an upgrade not yet run).
        await sql(stack, "UPDATE dbos.dbos_migrations SET version = version - 1")
        before = fallbacks("schema_behind")
        rows = await asyncio.gather(*(created_on(stack, flow_id) for _ in range(3)))
        for row in rows:
            assert (row["status"], row["track"], row["events_backend"]) == (
                "completed",
                "kafka",
                "kafka",
            )
            assert "this release needs" in row["fallback_reason"], row
            assert "twintrack migrate" in row["fallback_reason"]
            events = await api.events(row["id"])
            assert_contiguous(events)
            assert events[0]["data"]["track"] == "kafka"
            assert events[0]["data"]["fallback_reason"] == row["fallback_reason"]
            assert row["attempt"] == 1
        assert fallbacks("schema_behind") == before + 3
        await sql(stack, "UPDATE dbos.dbos_migrations SET version = version + 1")

        # One of its tables gone (a half-restored system database).
        await sql(stack, "ALTER TABLE dbos.streams RENAME TO streams_elsewhere")
        try:
            gone = await created_on(stack, flow_id)
            assert (gone["status"], gone["track"]) == ("completed", "kafka")
            assert "lacks streams" in gone["fallback_reason"]

            # The fallback off, live: a clear 503 naming why; nothing is created.
            r = await api.client.put(
                "/v1/admin/rollout",
                json={"fallback_to_kafka": False, "reason": "no fallback during the drill"},
                headers=auth,
            )
            assert r.status_code == 200, r.text
            assert r.json()["fallback_to_kafka"] is False
            refused = await api.client.post(
                "/v1/executions", json={"flow_id": flow_id}, headers=api.auth
            )
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert error["code"] == "unavailable"
            assert "DBOS_FALLBACK_TO_KAFKA is off" in error["message"]
            assert "lacks streams" in error["message"]
        finally:
            await sql(stack, "ALTER TABLE dbos.streams_elsewhere RENAME TO streams")

        again = await created_on(stack, flow_id)
        assert (again["status"], again["track"], again["fallback_reason"]) == (
            "completed",
            "dbos",
            None,
        )
        shown = (await api.client.get("/v1/admin/rollout", headers=auth)).json()
        assert shown["state"]["fallback_to_kafka"] is False
        assert shown["history"][1]["fallback_to_kafka"] is True  # seeded from the environment


async def run_executions_cli(stack: Stack, *args: str) -> tuple[int, str]:
    runner = CliRunner()
    result = await asyncio.to_thread(runner.invoke, executions_app, list(args), env=stack.env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


@pytest.mark.timeout(120)
async def test_bulk_stop_and_reroute_by_filter_act_once_per_execution(
    base_env: dict[str, str], logs: Path
) -> None:
    async with open_stack(base_env, logs, CLAIM_TTL_S="15") as stack:
        await stack.add_worker()  # serves both tracks
        api, auth = stack.api, await admin(stack)
        paused_flow = await api.create_flow(flows.crashable(ms=10))
        body = {"options": {"debug": True}}  # held paused by its worker until stopped
        admin_api = api.client

        async def make(track: str, start: bool) -> str:
            r = await admin_api.post(
                "/v1/executions",
                json={"flow_id": paused_flow, "track": track, **body},
                headers=auth,
            )
            assert r.status_code == 201, r.text
            ex = str(r.json()["id"])
            if start:
                r = await admin_api.post(f"/v1/executions/{ex}/start", headers=auth)
                assert r.status_code == 202, r.text
            return ex

        dbos_paused = [await make("dbos", True) for _ in range(3)]
        kafka_paused = [await make("kafka", True) for _ in range(2)]
        for ex in dbos_paused + kafka_paused:  # each held by the worker of its track
            await api.wait_status(ex, {"paused"}, 30)
        unstarted = [await make("dbos", False) for _ in range(2)]

        # Stop by filter: a dry run first (nothing changes), then the operation, then a replay.
        where = {"track": "dbos", "status": ["queued", "running", "paused"]}
        dry = await admin_api.post(
            "/v1/admin/executions/stop", json={"filter": where}, headers=auth
        )
        assert dry.status_code == 200, dry.text
        assert dry.json()["dry_run"] is True
        assert set(dry.json()["results"]) == set(dbos_paused)
        assert {r["outcome"] for r in dry.json()["results"].values()} == {"would stop"}
        request = {"filter": where, "dry_run": False, "operation_id": "incident-7", "reason": "i7"}
        done = await admin_api.post("/v1/admin/executions/stop", json=request, headers=auth)
        assert done.status_code == 200, done.text
        result = done.json()
        assert (result["operation_id"], result["replayed"]) == ("incident-7", False)
        assert set(result["results"]) == set(dbos_paused)
        assert {r["outcome"] for r in result["results"].values()} == {"stopped"}
        rows = await asyncio.gather(*(api.wait_status(ex, _DONE, 60) for ex in dbos_paused))
        assert {r["status"] for r in rows} == {"stopped"}
        replay = await admin_api.post("/v1/admin/executions/stop", json=request, headers=auth)
        assert replay.json()["replayed"] is True
        assert replay.json()["results"] == result["results"]
        reused = await admin_api.post(
            "/v1/admin/executions/stop",
            json={**request, "filter": {"track": "kafka"}},
            headers=auth,
        )
        assert reused.status_code == 422, reused.text
        assert reused.json()["error"]["code"] == "operation_id_reused"
        for ex in kafka_paused:
            assert (await api.get(ex))["status"] in {"queued", "running", "paused"}
        for ex in dbos_paused:  # one stop each, however often the operation was sent
            assert await _stop_commands(stack, ex) == 1, ex

        # Reroute by filter: the unstarted DBOS ones move to Kafka and run there once started.
        code, out = await run_cli(
            stack,
            "reroute",
            "--to",
            "kafka",
            "--filter",
            "status=created",
            "--yes",
            "--operation-id",
            "move-1",
        )
        assert code == 0, out
        assert "operation move-1" in out
        assert "moved: 2" in out
        for ex in unstarted:
            row = await api.get(ex)
            assert (row["track"], row["status"]) == ("kafka", "created")
        code, again = await run_cli(
            stack,
            "reroute",
            "--to",
            "kafka",
            "--filter",
            "status=created",
            "--yes",
            "--operation-id",
            "move-1",
        )
        assert code == 0, again
        assert "replayed" in again
        for ex in unstarted:
            r = await admin_api.post(f"/v1/executions/{ex}/start", headers=auth)
            assert r.status_code == 202, r.text
            await api.wait_status(ex, {"paused"}, 30)  # taken by the Kafka worker

        # The CLI stop by filter ends the Kafka ones (and the rerouted, now paused on Kafka).
        code, out = await run_executions_cli(
            stack, "stop", "--filter", "track=kafka", "--yes", "--operation-id", "cleanup"
        )
        assert code == 0, out
        assert "operation cleanup" in out
        rows = await asyncio.gather(
            *(api.wait_status(ex, _DONE, 60) for ex in kafka_paused + unstarted)
        )
        assert {r["status"] for r in rows} == {"stopped"}
        for row in rows:
            if row["id"] in unstarted:
                assert row["track"] == "kafka"
                events = await api.events(row["id"])
                assert_contiguous(events)
                (started,) = [e for e in events if e["type"] == "execution.started"]
                assert started["data"]["track"] == "kafka"


async def _stop_commands(stack: Stack, execution_id: str) -> int:
    async with stack.container.db_engine.connect() as conn:
        count = await conn.scalar(
            text(
                "SELECT count(*) FROM execution_commands"
                " WHERE execution_id = :ex AND command = 'stop'"
            ),
            {"ex": execution_id},
        )
    return int(count or 0)
