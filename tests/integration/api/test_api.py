"""The HTTP API over a real PostgreSQL and the real stores and service.

Only the track ports (task queue, event bus, command channel) are in-memory, swapped in through
`ServiceFactory.build`'s overrides: this file is about HTTP behaviour; the tracks have their own
suites on real servers.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

from twintrack.adapters.memory import MemoryPorts
from twintrack.adapters.postgres import PostgresFlowStore as PostgresFlowStore
from twintrack.bootstrap import ServiceFactory
from twintrack.config import Settings
from twintrack.core.service import ExecutionService
from twintrack.core.stores import ExecutionStore, FlowStore, KeyStore
from twintrack.domain.commands import Command
from twintrack.domain.events import Event, EventType
from twintrack.domain.execution import EventsBackend, ExecutionStatus, Track, TriggerEvent
from twintrack.entrypoints.api import ApiContainer, create_app
from twintrack.entrypoints.api.auth import ApiKeyAuthenticator
from twintrack.entrypoints.api.metrics import REGISTRY
from twintrack.nodes.registry import NodeRegistry, builtin_registry

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]
Headers = dict[str, str]
S = ExecutionStatus

FLOW: dict[str, Any] = {
    "name": "sum",
    "nodes": [
        {"id": "x", "type": "const", "config": {"value": 2}},
        {"id": "add", "type": "math", "config": {"op": "add", "b": 3}},
        {"id": "out", "type": "output", "config": {"name": "result"}},
    ],
    "edges": [
        {"from": "x.value", "to": "add.a"},
        {"from": "add.result", "to": "out.value"},
    ],
}


@dataclass
class Container:
    """The in-test ApiContainer: the factory's service on the real Postgres stores, its track
    ports swapped for in-memory ones through the factory's overrides, and readiness a test
    can flip."""

    service: ExecutionService
    flows: FlowStore
    keys: KeyStore
    registry: NodeRegistry
    executions: ExecutionStore
    ports: MemoryPorts
    checks: dict[str, bool] = field(default_factory=lambda: {"database": True, "broker": True})

    async def ready(self) -> dict[str, bool]:
        return dict(self.checks)


def build_container(
    db_engine: AsyncEngine,
    *,
    enable_dbos: bool = False,
    events_backend: EventsBackend = EventsBackend.KAFKA,
    ports: MemoryPorts | None = None,
    **more: Any,
) -> Container:
    ports = ports or MemoryPorts()
    settings = Settings(
        database_url=None,
        kafka_bootstrap_servers=None,
        enable_dbos_execution=enable_dbos,
        execution_events_backend=events_backend,
        execution_max_depth=100,
        **more,
    )
    built = ServiceFactory(settings).build(
        db_engine=db_engine,
        registry=builtin_registry(),
        queues=ports.task_queues(),
        buses=ports.event_buses(),
        commands=ports.command_channel(),
    )
    return Container(
        built.service, built.flows, built.keys, built.registry, built.executions, ports
    )


def client_for(app_container: ApiContainer, **options: Any) -> httpx.AsyncClient:
    """The API as processes serve it: the bootstrap's store errors mapped (503 when lost)."""
    options.setdefault("store_errors", ServiceFactory.store_errors())
    app = create_app(app_container, **options)
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """What the API logged during the test (and independence from logging set up elsewhere)."""
    with capture_logs() as captured:
        yield captured


@pytest.fixture
def container(db_engine: AsyncEngine) -> Container:
    return build_container(db_engine)


@pytest_asyncio.fixture
async def client(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(container) as http:
        yield http


async def _headers(keys: KeyStore, owner: str) -> Headers:
    return {"Authorization": f"Bearer {(await keys.create(owner)).key}"}


@pytest_asyncio.fixture
async def alice(container: Container) -> Headers:
    return await _headers(container.keys, "alice")


@pytest_asyncio.fixture
async def bob(container: Container) -> Headers:
    return await _headers(container.keys, "bob")


# -- helpers ------------------------------------------------------------------------------------


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code, error
    assert error["message"]
    return error


def locations(error: dict[str, Any]) -> list[str]:
    return [d["location"] for d in error["details"]]


async def new_flow(http: httpx.AsyncClient, headers: Headers, doc: Any = FLOW) -> str:
    response = await http.post("/v1/flows", json=doc, headers=headers)
    assert response.status_code == 201, response.text
    flow_id: str = response.json()["id"]
    return flow_id


async def new_execution(
    http: httpx.AsyncClient, headers: Headers, flow_id: str, **body: Any
) -> dict[str, Any]:
    response = await http.post("/v1/executions", json={"flow_id": flow_id, **body}, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def finish(
    executions: ExecutionStore,
    execution_id: str,
    end: S = S.COMPLETED,
    next_event_index: int | None = None,
) -> None:
    """Drive the row to `end` as a worker would (no worker runs in these tests), recording
    where the stream ends as a worker does."""
    for status in (S.QUEUED, S.RUNNING, end):
        record = await executions.get(execution_id)
        if record.status is not status:
            index = next_event_index if status is end else None
            await executions.transition(execution_id, status, next_event_index=index)


def parse_sse(text: str) -> list[dict[str, str]]:
    """SSE messages as {field: value}; comments (pings) are skipped."""
    messages = []
    for block in re.split(r"\r\n\r\n|\n\n", text):
        message: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                message[name] = value.removeprefix(" ")
        if message:
            messages.append(message)
    return messages


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- auth ---------------------------------------------------------------------------------------


# Cases are looped rather than parametrized where each would otherwise pay for a fresh database.
UNAUTHENTICATED = [None, "", "Bearer", "Basic dXNlcjpwdw==", "Bearer tt_unknown", "Bearer nope"]


async def test_requests_without_a_valid_key_are_401(client: httpx.AsyncClient) -> None:
    for authorization in UNAUTHENTICATED:
        headers = {} if authorization is None else {"Authorization": authorization}
        for method, path in [
            ("GET", "/v1/flows"),
            ("POST", "/v1/executions"),
            ("GET", "/v1/executions/ex_1/events"),
            ("POST", "/v1/executions/ex_1/stop"),
        ]:
            response = await client.request(method, path, headers=headers)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer"), authorization


async def test_another_owners_flow_and_execution_are_404(
    client: httpx.AsyncClient, alice: Headers, bob: Headers
) -> None:
    flow_id = await new_flow(client, alice)
    execution_id = (await new_execution(client, alice, flow_id))["id"]

    for method, path, body in [
        ("GET", f"/v1/flows/{flow_id}", None),
        ("PUT", f"/v1/flows/{flow_id}", FLOW),
        ("POST", "/v1/executions", {"flow_id": flow_id}),
        ("GET", f"/v1/executions/{execution_id}", None),
        ("GET", f"/v1/executions/{execution_id}/tree", None),
        ("GET", f"/v1/executions/{execution_id}/events", None),
        ("POST", f"/v1/executions/{execution_id}/stop", None),
        ("POST", f"/v1/executions/{execution_id}/start", None),
    ]:
        response = await client.request(method, path, json=body, headers=bob)
        assert_error(response, 404, "not_found")

    assert (await client.get("/v1/flows", headers=bob)).json()["items"] == []
    assert (await client.get("/v1/executions", headers=bob)).json()["items"] == []
    still = await client.get(f"/v1/executions/{execution_id}", headers=alice)
    assert still.json()["status"] == "created"


async def test_successful_key_lookups_are_cached_until_the_ttl(container: Container) -> None:
    now = [0.0]
    calls: list[str] = []

    class Keys:
        async def authenticate(self, key: str) -> str | None:
            calls.append(key)
            return {"tt_good": "alice"}.get(key)

    auth = ApiKeyAuthenticator(Keys(), ttl_s=30, clock=lambda: now[0])
    assert await auth.owner_of("tt_good") == "alice"
    now[0] = 29.9
    assert await auth.owner_of("tt_good") == "alice"
    assert calls == ["tt_good"]
    now[0] = 30.0
    assert await auth.owner_of("tt_good") == "alice"
    assert calls == ["tt_good", "tt_good"]
    # Failures are not cached: a key created a moment later must work at once.
    assert await auth.owner_of("tt_bad") is None
    assert await auth.owner_of("tt_bad") is None
    assert calls.count("tt_bad") == 2


async def test_a_revoked_key_works_until_the_cache_ttl_then_fails(container: Container) -> None:
    created = await container.keys.create("alice")
    headers = {"Authorization": f"Bearer {created.key}"}
    async with client_for(container) as cached, client_for(container, auth_cache_ttl_s=0) as live:
        assert (await cached.get("/v1/flows", headers=headers)).status_code == 200
        assert (await live.get("/v1/flows", headers=headers)).status_code == 200
        await container.keys.revoke("alice", created.id)
        assert (await cached.get("/v1/flows", headers=headers)).status_code == 200  # documented
        assert_error(await live.get("/v1/flows", headers=headers), 401, "unauthorized")


# -- flows --------------------------------------------------------------------------------------


async def test_flow_create_get_update_and_versions(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    created = await client.post("/v1/flows", json=FLOW, headers=alice)
    assert created.status_code == 201
    flow_id = created.json()["id"]
    assert created.json() == {"id": flow_id, "version": 1}

    got = (await client.get(f"/v1/flows/{flow_id}", headers=alice)).json()
    assert (got["id"], got["version"], got["latest_version"], got["name"]) == (flow_id, 1, 1, "sum")
    assert got["definition"] == FLOW
    assert {"created_at", "updated_at", "version_created_at"} <= set(got)

    renamed = {**FLOW, "name": "sum v2"}
    updated = await client.put(f"/v1/flows/{flow_id}", json=renamed, headers=alice)
    assert updated.status_code == 200
    assert updated.json() == {"id": flow_id, "version": 2}

    latest = (await client.get(f"/v1/flows/{flow_id}", headers=alice)).json()
    assert (latest["version"], latest["name"]) == (2, "sum v2")
    first = (await client.get(f"/v1/flows/{flow_id}?version=1", headers=alice)).json()
    assert (first["version"], first["latest_version"], first["name"]) == (1, 2, "sum")
    missing = await client.get(f"/v1/flows/{flow_id}?version=3", headers=alice)
    assert_error(missing, 404, "not_found")
    assert_error(await client.get("/v1/flows/fl_nope", headers=alice), 404, "not_found")
    assert_error(await client.get("/v1/flows/bad%00id", headers=alice), 404, "not_found")
    assert_error(await client.put("/v1/flows/fl_nope", json=FLOW, headers=alice), 404, "not_found")


async def test_flow_list_pages_with_a_cursor(client: httpx.AsyncClient, alice: Headers) -> None:
    made = [await new_flow(client, alice, {**FLOW, "name": f"f{i}"}) for i in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/flows", params=params, headers=alice)).json()
        pages += 1
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == (made[::-1], 3)
    assert_error(await client.get("/v1/flows?cursor=garbage", headers=alice), 400, "invalid_cursor")
    error = assert_error(
        await client.get("/v1/flows?limit=0", headers=alice), 400, "invalid_parameter"
    )
    assert locations(error) == ["query.limit"]


async def test_invalid_flows_are_422_naming_the_node_or_field(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    bad = {
        "name": "bad",
        "nodes": [
            {"id": "a", "type": "const", "config": {"value": 1}},
            {"id": "b", "type": "nope", "config": {}},
            {"id": "c", "type": "math", "config": {"op": "pow"}},
        ],
        "edges": [{"from": "a.value", "to": "a.missing"}],
    }
    error = assert_error(
        await client.post("/v1/flows", json=bad, headers=alice), 422, "invalid_flow"
    )
    assert {"nodes[1].type", "nodes[2].config.op", "edges[0].to"} <= set(locations(error))
    messages = " ".join(d["message"] for d in error["details"])
    assert "node 'b'" in messages
    assert "unknown node type 'nope'" in messages

    cycle = {
        "name": "loop",
        "nodes": [
            {"id": "p", "type": "math", "config": {"op": "add", "b": 1}},
            {"id": "q", "type": "math", "config": {"op": "add", "b": 1}},
        ],
        "edges": [{"from": "p.result", "to": "q.a"}, {"from": "q.result", "to": "p.a"}],
    }
    error = assert_error(
        await client.post("/v1/flows", json=cycle, headers=alice), 422, "invalid_flow"
    )
    assert "cycle" in error["message"]

    flow_id = await new_flow(client, alice)
    updated = await client.put(f"/v1/flows/{flow_id}", json=bad, headers=alice)
    assert_error(updated, 422, "invalid_flow")
    assert (await client.get(f"/v1/flows/{flow_id}", headers=alice)).json()["version"] == 1


def const_flow(value: str) -> bytes:
    """A raw flow body whose one const node has `value` (JSON text) as its value."""
    node = '{"id": "a", "type": "const", "config": {"value": ' + value + "}}"
    return ('{"name": "n", "nodes": [' + node + "]}").encode()


UNSTORABLE_FLOWS = [
    (b"{not json", ""),
    (const_flow("NaN"), ""),
    (const_flow("-Infinity"), ""),
    (const_flow("1e999"), "nodes[0].config.value"),
    (const_flow('"a\\u0000b"'), "nodes[0].config.value"),
    (const_flow('{"k\\u0000": 1}'), "nodes[0].config.value"),
    (b"[" * 100_000, ""),
]


async def test_flow_bodies_postgres_cannot_store_are_422(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    for raw, location in UNSTORABLE_FLOWS:
        response = await client.post("/v1/flows", content=raw, headers=alice)
        error = assert_error(response, 422, "invalid_flow")
        assert locations(error) == [location], raw[:80]
    assert (await client.get("/v1/flows", headers=alice)).json()["items"] == []


async def test_bodies_over_one_mib_are_413(client: httpx.AsyncClient, alice: Headers) -> None:
    big = {
        **FLOW,
        "nodes": [
            *FLOW["nodes"],
            {"id": "pad", "type": "const", "config": {"value": "x" * (1 << 20)}},
        ],
    }
    error = assert_error(
        await client.post("/v1/flows", json=big, headers=alice), 413, "payload_too_large"
    )
    assert error["details"] == {"limit_bytes": 1 << 20}

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(17):
            yield b" " * 65536

    response = await client.post("/v1/flows", content=chunked(), headers=alice)
    assert_error(response, 413, "payload_too_large")

    exactly = json.dumps(FLOW).encode().ljust(1 << 20)  # trailing spaces: still valid JSON
    assert (await client.post("/v1/flows", content=exactly, headers=alice)).status_code == 201


# -- executions ---------------------------------------------------------------------------------


async def test_create_execution_reports_its_track_and_events_backend(
    client: httpx.AsyncClient, container: Container, alice: Headers
) -> None:
    flow_id = await new_flow(client, alice)
    before = metric("twintrack_executions_created_total", track="kafka")
    response = await client.post("/v1/executions", json={"flow_id": flow_id}, headers=alice)

    assert response.status_code == 201
    body = response.json()
    assert body == {
        "id": body["id"],
        "status": "created",
        "track": "kafka",
        "events_backend": "kafka",
    }
    assert response.headers["location"] == f"/v1/executions/{body['id']}"
    assert metric("twintrack_executions_created_total", track="kafka") == before + 1
    created = container.ports.buses[EventsBackend.KAFKA].of(body["id"])
    assert [(e.index, e.type) for e in created] == [(0, EventType.EXECUTION_CREATED)]


async def test_dbos_routing_shows_in_the_created_execution(db_engine: AsyncEngine) -> None:
    dbos = build_container(db_engine, enable_dbos=True, events_backend=EventsBackend.DBOS)
    headers = await _headers(dbos.keys, "carol")
    async with client_for(dbos) as http:
        flow_id = await new_flow(http, headers)
        created = await new_execution(http, headers, flow_id)
    assert (created["track"], created["events_backend"]) == ("dbos", "dbos")


async def test_an_unavailable_track_is_503(db_engine: AsyncEngine) -> None:
    kafka_only = MemoryPorts.only([Track.KAFKA], [EventsBackend.KAFKA])
    app_container = build_container(db_engine, enable_dbos=True, ports=kafka_only)
    headers = await _headers(app_container.keys, "carol")
    async with client_for(app_container) as http:
        flow_id = await new_flow(http, headers)
        response = await http.post("/v1/executions", json={"flow_id": flow_id}, headers=headers)
    error = assert_error(response, 503, "unavailable")
    assert "dbos" in error["message"]


async def test_execution_pins_a_version_and_rejects_a_missing_one(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    flow_id = await new_flow(client, alice)
    await client.put(f"/v1/flows/{flow_id}", json={**FLOW, "name": "v2"}, headers=alice)
    pinned = await new_execution(client, alice, flow_id, version=1)
    latest = await new_execution(client, alice, flow_id)
    for created, version in ((pinned, 1), (latest, 2)):
        row = (await client.get(f"/v1/executions/{created['id']}", headers=alice)).json()
        assert row["flow_version"] == version
    response = await client.post(
        "/v1/executions", json={"flow_id": flow_id, "version": 9}, headers=alice
    )
    assert_error(response, 404, "not_found")
    response = await client.post("/v1/executions", json={"flow_id": "fl_nope"}, headers=alice)
    assert_error(response, 404, "not_found")


BAD_EXECUTION_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"options": {"max_concurrency": 0}}, "options.max_concurrency"),
    ({"options": {"bogus": 1}}, "options.bogus"),
    ({"options": {"breakpoints": ["add", "ghost"]}}, "options.breakpoints[1]"),
    ({"options": {"inputs": {"add": 1}}}, "options.inputs.add"),
    ({"options": {"node_timeout_s": -1}}, "options.node_timeout_s"),
    ({"events": [{"payload": 1}]}, "events[0].name"),
    ({"events": [{"name": "go", "payload": {"k": ["\x00"]}}]}, "events[0].payload.k[0]"),
    ({"options": {"inputs": {"x": "\x00"}}}, "options.inputs.x"),
    ({"version": 0}, "version"),
    ({"surprise": True}, "surprise"),
    ({"flow_id": "no spaces"}, "flow_id"),
]


async def test_bad_execution_bodies_are_422_naming_the_field(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    flow_id = await new_flow(client, alice)
    for body, location in BAD_EXECUTION_BODIES:
        response = await client.post(
            "/v1/executions", json={"flow_id": flow_id, **body}, headers=alice
        )
        error = assert_error(response, 422, "invalid_request")
        assert location in locations(error), (body, error)
    assert (await client.get("/v1/executions", headers=alice)).json()["items"] == []


async def test_nan_and_malformed_json_in_an_execution_body_are_422(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    flow_id = await new_flow(client, alice)
    raw = '{"flow_id": "FLOW", "events": [{"name": "go", "payload": NaN}]}'.replace("FLOW", flow_id)
    headers = {**alice, "Content-Type": "application/json"}
    error = assert_error(
        await client.post("/v1/executions", content=raw, headers=headers), 422, "invalid_request"
    )
    assert locations(error) == ["events[0].payload"]
    error = assert_error(
        await client.post("/v1/executions", content="{", headers=headers), 422, "invalid_request"
    )
    assert "not valid JSON" in error["message"]


async def test_get_returns_the_whole_row(
    client: httpx.AsyncClient, container: Container, alice: Headers
) -> None:
    flow_id = await new_flow(client, alice)
    options = {"debug": True, "breakpoints": ["add"], "max_concurrency": 2, "inputs": {"x": 40}}
    events = [{"name": "go", "payload": {"n": 1}}]
    created = await new_execution(client, alice, flow_id, options=options, events=events)

    row = (await client.get(f"/v1/executions/{created['id']}", headers=alice)).json()

    record = await container.executions.get(created["id"])
    assert set(row) == set(type(record).model_fields)
    assert row == record.model_dump(mode="json")
    assert (row["owner_id"], row["flow_id"], row["depth"], row["root_id"]) == (
        "alice",
        flow_id,
        0,
        created["id"],
    )
    assert row["options"]["breakpoints"] == ["add"]
    assert row["trigger_events"] == events


async def test_list_filters_and_pages(
    client: httpx.AsyncClient, container: Container, alice: Headers, bob: Headers
) -> None:
    flow_a, flow_b = await new_flow(client, alice), await new_flow(client, alice)
    on_a = [(await new_execution(client, alice, flow_a))["id"] for _ in range(3)]
    on_b = (await new_execution(client, alice, flow_b))["id"]
    await client.post(f"/v1/executions/{on_a[0]}/start", headers=alice)
    await new_execution(client, bob, await new_flow(client, bob))

    async def ids(**params: Any) -> list[str]:
        response = await client.get("/v1/executions", params=params, headers=alice)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await ids() == [on_b, *on_a[::-1]]
    assert await ids(flow_id=flow_a) == on_a[::-1]
    assert await ids(status="queued") == [on_a[0]]
    assert await ids(status="created", flow_id=flow_a) == on_a[:0:-1]
    assert await ids(track="kafka") == [on_b, *on_a[::-1]]
    assert await ids(track="dbos") == []

    first = (await client.get("/v1/executions?limit=3", headers=alice)).json()
    assert len(first["items"]) == 3
    rest = await client.get(f"/v1/executions?limit=3&cursor={first['next_cursor']}", headers=alice)
    assert [i["id"] for i in rest.json()["items"]] == [on_a[0]]
    assert rest.json()["next_cursor"] is None

    for params, location in [
        ("status=bogus", "query.status"),
        ("track=rail", "query.track"),
        ("limit=100000", "query.limit"),
        ("flow_id=not%20an%20id", "query.flow_id"),
    ]:
        error = assert_error(
            await client.get(f"/v1/executions?{params}", headers=alice), 400, "invalid_parameter"
        )
        assert locations(error) == [location]
    assert_error(
        await client.get("/v1/executions?cursor=WyJ4Il0", headers=alice), 400, "invalid_cursor"
    )


async def test_tree_lists_descendants_with_the_aggregate_status(
    client: httpx.AsyncClient, container: Container, alice: Headers, bob: Headers
) -> None:
    flow_id = await new_flow(client, alice)
    root = await container.executions.get((await new_execution(client, alice, flow_id))["id"])
    child = await container.executions.create(
        owner_id="alice",
        flow_id=flow_id,
        flow_version=1,
        track=root.track,
        events_backend=root.events_backend,
        parent_id=root.id,
        trigger_events=[TriggerEvent(name="go")],
    )

    tree = (await client.get(f"/v1/executions/{root.id}/tree", headers=alice)).json()
    assert tree["root_id"] == root.id
    assert tree["tree_status"] == "running"
    assert [(e["id"], e["depth"]) for e in tree["executions"]] == [(root.id, 0), (child.id, 1)]

    await finish(container.executions, root.id)
    await finish(container.executions, child.id, S.FAILED)
    tree = (await client.get(f"/v1/executions/{root.id}/tree", headers=alice)).json()
    assert tree["tree_status"] == "failed"
    sub = (await client.get(f"/v1/executions/{child.id}/tree", headers=alice)).json()
    assert (sub["root_id"], len(sub["executions"])) == (child.id, 1)


async def test_list_filters_by_parent_root_and_creation_time(
    client: httpx.AsyncClient, container: Container, alice: Headers, bob: Headers
) -> None:
    flow_id = await new_flow(client, alice)
    root = await container.executions.get((await new_execution(client, alice, flow_id))["id"])
    children = [
        await container.executions.create(
            owner_id="alice",
            flow_id=flow_id,
            flow_version=1,
            track=root.track,
            events_backend=root.events_backend,
            parent_id=parent_id,
        )
        for parent_id in (root.id, root.id)
    ]
    grandchild = await container.executions.create(
        owner_id="alice",
        flow_id=flow_id,
        flow_version=1,
        track=root.track,
        events_backend=root.events_backend,
        parent_id=children[0].id,
    )
    other = (await new_execution(client, alice, flow_id))["id"]

    async def ids(headers: Headers = alice, **params: Any) -> list[str]:
        response = await client.get("/v1/executions", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await ids(parent_id=root.id) == [children[1].id, children[0].id]
    assert await ids(root_id=root.id) == [grandchild.id, children[1].id, children[0].id, root.id]
    assert await ids(bob, root_id=root.id) == []
    # Paging a filtered list with its cursor gives each match once, and only matches.
    first = (
        await client.get("/v1/executions", params={"root_id": root.id, "limit": 3}, headers=alice)
    ).json()
    rest = await ids(root_id=root.id, limit=3, cursor=first["next_cursor"])
    assert [i["id"] for i in first["items"]] + rest == await ids(root_id=root.id)

    cut = (await container.executions.get(grandchild.id)).created_at
    newer = await ids(created_after=cut.isoformat())
    assert newer == [other, grandchild.id]
    assert grandchild.id not in await ids(created_before=cut.isoformat())
    naive_utc = cut.astimezone(UTC).replace(tzinfo=None).isoformat()
    assert await ids(created_after=naive_utc) == newer
    for params, location in [
        ("created_after=yesterday", "query.created_after"),
        ("parent_id=not%20an%20id", "query.parent_id"),
        ("root_id=%25", "query.root_id"),
    ]:
        error = assert_error(
            await client.get(f"/v1/executions?{params}", headers=alice), 400, "invalid_parameter"
        )
        assert locations(error) == [location]


# -- commands -----------------------------------------------------------------------------------


async def test_commands_are_accepted_and_recorded(
    client: httpx.AsyncClient, container: Container, alice: Headers
) -> None:
    flow_id = await new_flow(client, alice)
    execution_id = (await new_execution(client, alice, flow_id))["id"]
    before = metric("twintrack_commands_total", track="kafka", command="pause")

    started = await client.post(f"/v1/executions/{execution_id}/start", headers=alice)
    assert started.status_code == 202
    assert started.json() == {"id": execution_id, "command": "start", "status": "queued"}
    assert container.ports.queues[Track.KAFKA].enqueued == [(execution_id, 1)]

    for command in ("pause", "step", "resume"):
        body = {"reason": f"{command} please"} if command == "pause" else None
        response = await client.post(
            f"/v1/executions/{execution_id}/{command}", json=body, headers=alice
        )
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "queued"
    assert container.ports.commands.of(execution_id) == [
        (Command.PAUSE, "pause please"),
        (Command.STEP, None),
        (Command.RESUME, None),
    ]
    assert metric("twintrack_commands_total", track="kafka", command="pause") == before + 1

    stopped = await client.post(
        f"/v1/executions/{execution_id}/stop", json={"reason": "enough"}, headers=alice
    )
    assert stopped.status_code == 202
    assert stopped.json()["status"] == "stopped"  # no worker held it: the service ended it
    row = (await client.get(f"/v1/executions/{execution_id}", headers=alice)).json()
    assert (row["status"], row["error_message"]) == ("stopped", "enough")
    types = [e.type for e in container.ports.buses[EventsBackend.KAFKA].of(execution_id)]
    assert types == [
        EventType.EXECUTION_CREATED,
        EventType.EXECUTION_QUEUED,
        EventType.EXECUTION_STOPPED,
    ]


async def test_create_with_start_runs_it_in_one_request(
    client: httpx.AsyncClient, container: Container, alice: Headers
) -> None:
    flow_id = await new_flow(client, alice)
    before = metric("twintrack_commands_total", track="kafka", command="start")
    created = await new_execution(client, alice, flow_id, start=True)

    assert created["status"] == "queued"
    assert container.ports.queues[Track.KAFKA].enqueued == [(created["id"], 1)]
    types = [e.type for e in container.ports.buses[EventsBackend.KAFKA].of(created["id"])]
    assert types == [EventType.EXECUTION_CREATED, EventType.EXECUTION_QUEUED]
    assert metric("twintrack_commands_total", track="kafka", command="start") == before + 1


async def test_create_with_a_refused_start_names_the_execution_it_made(
    db_engine: AsyncEngine,
) -> None:
    """A start refused by the owner's limit is a 429, yet the execution exists (`created`) and
    `Location` names it; a retry under the same key starts that one once there is room."""
    limited = build_container(db_engine, max_running_executions_per_owner=1)
    headers = await _headers(limited.keys, "carol")
    async with client_for(limited) as http:
        flow_id = await new_flow(http, headers)
        first = await new_execution(http, headers, flow_id, start=True)
        keyed = {**headers, "Idempotency-Key": "carol-2"}
        body = {"flow_id": flow_id, "start": True}

        refused = await http.post("/v1/executions", json=body, headers=keyed)
        error = assert_error(refused, 429, "limit_exceeded")
        assert "1" in error["message"]
        second_id = refused.headers["location"].rsplit("/", 1)[1]
        row = (await http.get(f"/v1/executions/{second_id}", headers=headers)).json()
        assert row["status"] == "created"

        await finish(limited.executions, first["id"])
        retried = await http.post("/v1/executions", json=body, headers=keyed)
        assert retried.status_code == 201, retried.text
        assert retried.headers["idempotent-replayed"] == "true"
        assert retried.json()["id"] == second_id
        assert retried.json()["status"] == "queued"

        await finish(limited.executions, second_id)
        again = await http.post("/v1/executions", json=body, headers=keyed)
        assert again.status_code == 201, again.text  # ended: answered as it is, never a 409
        assert again.json()["status"] == "completed"
    assert limited.ports.queues[Track.KAFKA].ids() == [first["id"], second_id]


async def test_create_with_a_start_that_cannot_be_delivered_is_503_with_its_location(
    client: httpx.AsyncClient, container: Container, alice: Headers
) -> None:
    flow_id = await new_flow(client, alice)
    container.ports.queues[Track.KAFKA].refuse_enqueue = ConnectionError("broker gone")
    response = await client.post(
        "/v1/executions", json={"flow_id": flow_id, "start": True}, headers=alice
    )
    error = assert_error(response, 503, "unavailable")
    execution_id = response.headers["location"].rsplit("/", 1)[1]
    assert execution_id in error["message"]
    row = (await client.get(f"/v1/executions/{execution_id}", headers=alice)).json()
    assert row["status"] == "queued"  # the recovery service delivers it


async def test_commands_on_a_finished_execution_are_409(
    client: httpx.AsyncClient, container: Container, alice: Headers
) -> None:
    flow_id = await new_flow(client, alice)
    execution_id = (await new_execution(client, alice, flow_id))["id"]
    await finish(container.executions, execution_id)

    for command in Command:
        response = await client.post(
            f"/v1/executions/{execution_id}/{command.value}", headers=alice
        )
        error = assert_error(response, 409, "conflict")
        assert "completed" in error["message"]
    assert container.ports.commands.of(execution_id) == []


async def test_bad_command_requests(client: httpx.AsyncClient, alice: Headers) -> None:
    flow_id = await new_flow(client, alice)
    execution_id = (await new_execution(client, alice, flow_id))["id"]
    response = await client.post(
        f"/v1/executions/{execution_id}/pause", json={"why": "x"}, headers=alice
    )
    assert locations(assert_error(response, 422, "invalid_request")) == ["why"]
    response = await client.post(
        f"/v1/executions/{execution_id}/pause", json={"reason": "a\x00"}, headers=alice
    )
    assert locations(assert_error(response, 422, "invalid_request")) == ["reason"]
    assert_error(
        await client.post(f"/v1/executions/{execution_id}/explode", headers=alice), 404, "not_found"
    )
    assert_error(await client.post("/v1/executions/ex_nope/pause", headers=alice), 404, "not_found")


# -- events (SSE) -------------------------------------------------------------------------------


async def _run_to_completion(container: Container, execution_id: str, start_at: int) -> None:
    """Publish what a worker would, after the service's own events, and record the ending in
    the row as it would (a subscriber gets the terminal event once the row shows it)."""
    bus = container.ports.buses[EventsBackend.KAFKA]
    steps = [
        (EventType.EXECUTION_STARTED, {}),
        (EventType.NODE_STARTED, {"node_id": "x"}),
        (EventType.NODE_COMPLETED, {"node_id": "x"}),
        (EventType.EXECUTION_COMPLETED, {"outputs": {"result": 5}}),
    ]
    await container.executions.transition(execution_id, ExecutionStatus.RUNNING)
    for offset, (event_type, data) in enumerate(steps):
        await bus.publish(
            Event(execution_id=execution_id, index=start_at + offset, type=event_type, data=data)
        )
    await container.executions.transition(
        execution_id,
        ExecutionStatus.COMPLETED,
        outputs={"result": 5},
        next_event_index=start_at + len(steps),
    )


async def _started_execution(client: httpx.AsyncClient, headers: Headers) -> str:
    execution_id: str = (await new_execution(client, headers, await new_flow(client, headers)))[
        "id"
    ]
    assert (
        await client.post(f"/v1/executions/{execution_id}/start", headers=headers)
    ).status_code == 202
    return execution_id


def indices(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return [int(m["id"]) for m in parse_sse(response.text)]


async def test_sse_replays_from_an_index_and_ends_after_the_terminal_event(
    client: httpx.AsyncClient, container: Container, alice: Headers
) -> None:
    execution_id = await _started_execution(client, alice)  # created 0, queued 1
    await _run_to_completion(container, execution_id, 2)  # 2..5, completed at 5
    url = f"/v1/executions/{execution_id}/events"

    everything = await client.get(url, headers=alice)
    messages = parse_sse(everything.text)
    assert [int(m["id"]) for m in messages] == [0, 1, 2, 3, 4, 5]
    assert [m["event"] for m in messages] == [
        "execution.created",
        "execution.queued",
        "execution.started",
        "node.started",
        "node.completed",
        "execution.completed",
    ]
    envelope = json.loads(messages[-1]["data"])
    assert set(envelope) == {"execution_id", "index", "type", "timestamp", "data"}
    assert (envelope["execution_id"], envelope["index"]) == (execution_id, 5)
    assert envelope["data"] == {"outputs": {"result": 5}}

    assert indices(await client.get(f"{url}?from_index=3", headers=alice)) == [3, 4, 5]
    resumed = await client.get(url, headers={**alice, "Last-Event-ID": "2"})
    assert indices(resumed) == [3, 4, 5]
    both = {**alice, "Last-Event-ID": "3"}
    assert indices(await client.get(f"{url}?from_index=1", headers=both)) == [4, 5]
    assert indices(await client.get(f"{url}?from_index=5", headers=both)) == [5]


async def test_sse_delivers_live_events_to_a_waiting_subscriber(
    client: httpx.AsyncClient, container: Container, alice: Headers
) -> None:
    execution_id = await _started_execution(client, alice)
    bus = container.ports.buses[EventsBackend.KAFKA]
    url = f"/v1/executions/{execution_id}/events"
    open_before = metric("twintrack_sse_subscribers", track="kafka")

    streams = [
        asyncio.create_task(client.get(url, headers=alice)),
        asyncio.create_task(client.get(url, headers={**alice, "Last-Event-ID": "1"})),
    ]
    await bus.wait_for_subscriber(execution_id, count=2)  # both streams are open and waiting
    assert metric("twintrack_sse_subscribers", track="kafka") == open_before + 2
    await _run_to_completion(container, execution_id, 2)

    full, resumed = await asyncio.gather(*streams)
    assert indices(full) == [0, 1, 2, 3, 4, 5]
    assert indices(resumed) == [2, 3, 4, 5]
    assert metric("twintrack_sse_subscribers", track="kafka") == open_before


async def test_sse_after_the_end_is_204_and_errors_are_json(
    client: httpx.AsyncClient, container: Container, alice: Headers, bob: Headers
) -> None:
    execution_id = await _started_execution(client, alice)
    await _run_to_completion(container, execution_id, 2)  # the row records the end at 6
    url = f"/v1/executions/{execution_id}/events"

    after_end = await client.get(url, headers={**alice, "Last-Event-ID": "5"})
    assert (after_end.status_code, after_end.text) == (204, "")
    assert indices(await client.get(url, headers={**alice, "Last-Event-ID": "4"})) == [5]

    assert_error(await client.get(url, headers=bob), 404, "not_found")
    assert_error(await client.get("/v1/executions/ex_nope/events", headers=alice), 404, "not_found")
    error = assert_error(
        await client.get(f"{url}?from_index=-1", headers=alice), 400, "invalid_parameter"
    )
    assert locations(error) == ["query.from_index"]
    assert_error(await client.get(f"{url}?from_index=x", headers=alice), 400, "invalid_parameter")
    bad_header = await client.get(url, headers={**alice, "Last-Event-ID": "five"})
    assert_error(bad_header, 400, "invalid_parameter")


# -- health, metrics, docs, unknown routes, bugs ------------------------------------------------


async def test_health_and_readiness(client: httpx.AsyncClient, container: Container) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": True, "broker": True}}

    container.checks["broker"] = False
    error = assert_error(await client.get("/readyz"), 503, "not_ready")
    assert error["details"] == {"database": True, "broker": False}
    assert "broker" in error["message"]


async def test_readiness_that_raises_is_503(
    client: httpx.AsyncClient, container: Container
) -> None:
    async def broken() -> dict[str, bool]:
        raise ConnectionRefusedError("db down")

    container.ready = broken  # type: ignore[method-assign]
    assert_error(await client.get("/readyz"), 503, "not_ready")


async def test_metrics_are_prometheus_text_labelled_with_the_track(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    await new_execution(client, alice, await new_flow(client, alice))
    await client.get("/v1/executions/ex_nope", headers=alice)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert re.search(r'^twintrack_executions_created_total\{track="kafka"\} [1-9]', text, re.M)
    assert re.search(
        r'^twintrack_http_request_seconds_count\{method="POST",route="/v1/executions",'
        r'status="201",track="kafka"\} [1-9]',
        text,
        re.M,
    )
    assert re.search(
        r'twintrack_http_request_seconds_count\{method="GET",'
        r'route="/v1/executions/\{execution_id\}",status="404",track="none"\}',
        text,
    )
    for line in text.splitlines():
        if line.startswith("twintrack_"):
            assert 'track="' in line, line


async def test_docs_and_openapi(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    assert {"FlowDocument", "CreateExecution", "ExecutionRecord", "ErrorResponse"} <= set(schemas)
    create_flow = spec["paths"]["/v1/flows"]["post"]
    assert create_flow["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/FlowDocument"
    }
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


async def test_unknown_routes_and_methods_answer_in_the_envelope(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    assert_error(await client.get("/nope"), 404, "not_found")
    assert_error(await client.get("/v1/nothing-here", headers=alice), 404, "not_found")
    assert_error(await client.delete("/v1/flows", headers=alice), 405, "method_not_allowed")


async def test_an_unexpected_exception_is_a_logged_generic_500(
    container: Container, session_factory: Sessions, logs: list[MutableMapping[str, Any]]
) -> None:
    class BrokenFlows(PostgresFlowStore):
        async def list(self, owner_id: str, limit: int = 50, cursor: str | None = None) -> Any:
            raise RuntimeError("secret internals")

    container.flows = BrokenFlows(session_factory)
    headers = await _headers(container.keys, "alice")
    async with client_for(container) as http:
        response = await http.get("/v1/flows", headers=headers)
    error = assert_error(response, 500, "internal_error")
    assert "secret" not in response.text
    assert error["details"] is None
    assert [(e["event"], e["log_level"], e["path"]) for e in logs] == [
        ("unhandled error", "error", "/v1/flows")
    ]
    assert isinstance(logs[0]["exc_info"], RuntimeError)


async def test_a_database_outage_is_503(
    container: Container, session_factory: Sessions, alice: Headers
) -> None:
    class DownFlows(PostgresFlowStore):
        async def list(self, owner_id: str, limit: int = 50, cursor: str | None = None) -> Any:
            raise ConnectionRefusedError("connection refused")

    container.flows = DownFlows(session_factory)
    async with client_for(container) as http:
        assert_error(await http.get("/v1/flows", headers=alice), 503, "unavailable")


async def test_extra_outage_errors_from_the_factory_are_503(
    container: Container, alice: Headers
) -> None:
    class BrokerDown(Exception):
        pass

    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise BrokerDown

    bus: Any = container.ports.buses[EventsBackend.KAFKA]
    bus.publish = fail
    async with client_for(container, unavailable_errors=[BrokerDown]) as http:
        flow_id = await new_flow(http, alice)
        response = await http.post("/v1/executions", json={"flow_id": flow_id}, headers=alice)
    assert_error(response, 503, "unavailable")
