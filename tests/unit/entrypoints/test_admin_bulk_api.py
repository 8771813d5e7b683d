"""`/v1/admin/executions/{stop,reroute}` on the memory adapters: admin keys only, typed answers
with a result per id, a replayed operation id, and 422 for an id reused with another request."""

from __future__ import annotations

import httpx

from twintrack.bootstrap import in_memory
from twintrack.config import Settings
from twintrack.domain.execution import Track
from twintrack.entrypoints.api import create_app
from twintrack.nodes.registry import builtin_registry

FLOW = {
    "name": "one",
    "nodes": [
        {"id": "x", "type": "const", "config": {"value": 1}},
        {"id": "out", "type": "output", "config": {"name": "x"}},
    ],
    "edges": [{"from": "x.value", "to": "out.value"}],
}


async def test_bulk_stop_and_reroute_through_the_admin_api() -> None:
    container = in_memory(
        Settings(database_url=None, kafka_bootstrap_servers=None), registry=builtin_registry()
    )
    admin = {"Authorization": f"Bearer {(await container.keys.create('ops', admin=True)).key}"}
    plain = {"Authorization": f"Bearer {(await container.keys.create('alice')).key}"}
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        flow_id = (await http.post("/v1/flows", json=FLOW, headers=plain)).json()["id"]
        ids = []
        for _ in range(3):
            ex = await http.post("/v1/executions", json={"flow_id": flow_id}, headers=plain)
            ids.append(ex.json()["id"])
        started = ids[0]
        assert (await http.post(f"/v1/executions/{started}/start", headers=plain)).is_success

        refused = await http.post("/v1/admin/executions/stop", json={}, headers=plain)
        assert refused.status_code == 403

        moved = await http.post(
            "/v1/admin/executions/reroute",
            json={
                "filter": {"owner": "alice", "status": ["created"]},
                "to": "dbos",
                "dry_run": False,
                "operation_id": "op-1",
            },
            headers=admin,
        )
        assert moved.status_code == 200, moved.text
        answer = moved.json()
        assert set(answer["results"]) == set(ids[1:])
        assert answer["counts"] == {"moved": 2}
        assert {container.stores.executions.records[i].track for i in ids[1:]} == {Track.DBOS}

        body = {"filter": {"owner": "alice"}, "dry_run": False, "operation_id": "op-2"}
        stop = await http.post("/v1/admin/executions/stop", json=body, headers=admin)
        assert stop.status_code == 200, stop.text
        assert stop.json()["counts"] == {"stopped": 3}
        again = await http.post("/v1/admin/executions/stop", json=body, headers=admin)
        assert (again.json()["replayed"], again.json()["results"]) == (True, stop.json()["results"])
        reused = await http.post(
            "/v1/admin/executions/stop", json={**body, "reason": "other"}, headers=admin
        )
        assert reused.status_code == 422
        assert reused.json()["error"]["code"] == "operation_id_reused"
        bad = await http.post(
            "/v1/admin/executions/reroute",
            json={"filter": {"track": "kafka"}, "to": "kafka"},
            headers=admin,
        )
        assert bad.status_code == 422, bad.text


async def test_a_rollout_change_may_be_conditional_on_the_version_read() -> None:
    container = in_memory(
        Settings(database_url=None, kafka_bootstrap_servers=None), registry=builtin_registry()
    )
    await container.start()
    admin = {"Authorization": f"Bearer {(await container.keys.create('ops', admin=True)).key}"}
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        shown = (await http.get("/v1/admin/rollout", headers=admin)).json()
        version = shown["state"]["version"]
        first = {"rollout_percent": 10, "reason": "stage 1", "expected_version": version}
        assert (await http.put("/v1/admin/rollout", json=first, headers=admin)).status_code == 200
        stale = {"rollout_percent": 0, "reason": "late", "expected_version": version}
        refused = await http.put("/v1/admin/rollout", json=stale, headers=admin)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "conflict"
        now = (await http.get("/v1/admin/rollout", headers=admin)).json()["state"]
        assert (now["rollout_percent"], now["fallback_to_kafka"]) == (10, False)
    await container.close()
