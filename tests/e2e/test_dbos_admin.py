"""DBOS's admin routes on a DBOS-track worker (DBOS_ADMIN_ENABLED): they answer, and list the
workflows of our executions with DBOS's own view of them."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.e2e import flows
from tests.e2e.stack import open_stack
from twintrack.tooling.embedded._proc import free_port


async def test_the_admin_server_answers_and_lists_our_workflows(
    base_env: dict[str, str], logs: Path
) -> None:
    port = free_port()
    env = {
        **base_env,
        "ENABLE_DBOS_EXECUTION": "true",
        "DBOS_ADMIN_ENABLED": "true",
        "DBOS_ADMIN_PORT": str(port),
    }
    async with open_stack(env, logs) as stack:
        await stack.add_worker()
        api = stack.api
        flow_id = await api.create_flow(flows.three_nodes())
        ex = (await api.create(flow_id))["id"]
        await api.command(ex, "start")
        await api.wait_status(ex, "completed", timeout=20)

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as admin:
            assert (await admin.get("/dbos-healthz")).json() == {"status": "healthy"}
            listed = (await admin.get("/workflows", params={"limit": 10})).json()
            mine = next(w for w in listed if w["workflow_id"] == ex)
            assert mine["status"] == "SUCCESS"
            assert mine["name"] == "twintrack_execution"
            assert mine["output"] == "completed"
            one = await admin.get(f"/workflows/{ex}")
            assert one.json()["workflow_id"] == ex
            steps = (await admin.get(f"/workflows/{ex}/steps")).json()
            assert [s["function_name"] for s in steps] == ["twintrack_run_flow"]
            assert (await admin.get("/workflows/ex_missing")).status_code == 404
            assert isinstance((await admin.get("/queues")).json(), list)
