"""The API served by `bootstrap.in_memory()`: a whole create/start/stop session with no server,
which is what the in-memory composition is for (a demo, a client's tests)."""

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


async def test_a_session_through_the_api_on_memory_adapters() -> None:
    container = in_memory(
        Settings(database_url=None, kafka_bootstrap_servers=None), registry=builtin_registry()
    )
    key = (await container.keys.create("alice")).key
    headers = {"Authorization": f"Bearer {key}"}
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        flow = await http.post("/v1/flows", json=FLOW, headers=headers)
        assert flow.status_code == 201, flow.text
        body = {"flow_id": flow.json()["id"]}
        created = (await http.post("/v1/executions", json=body, headers=headers)).json()
        ex = created["id"]
        assert (await http.post(f"/v1/executions/{ex}/start", headers=headers)).status_code == 202
        assert container.ports.queues[Track.KAFKA].ids() == [ex]
        stopped = await http.post(f"/v1/executions/{ex}/stop", json={}, headers=headers)
        assert stopped.json()["status"] == "stopped"
        again = await http.post(f"/v1/executions/{ex}/stop", json={}, headers=headers)
        assert again.status_code == 409
        assert (await http.get(f"/v1/executions/{ex}", headers={})).status_code == 401
