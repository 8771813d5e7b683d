"""Admin API keys: only they may choose an execution's track on create (`twintrack compare`).

Over a real PostgreSQL and the real stores and service; the ports are in-memory, as in
test_api.py, whose helpers this file reuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tests.integration.api.test_api import FLOW, Container, build_container, client_for
from twintrack.core.records import Principal
from twintrack.core.stores import KeyStore
from twintrack.entrypoints.api.auth import ApiKeyAuthenticator

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]
Headers = dict[str, str]


@pytest.fixture
def container(db_engine: AsyncEngine) -> Container:
    # The flag sends new executions to DBOS, so a `kafka` override is visibly an override.
    return build_container(db_engine, enable_dbos=True)


@pytest_asyncio.fixture
async def client(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(container) as http:
        yield http


async def _headers(keys: KeyStore, owner: str, *, admin: bool = False) -> Headers:
    return {"Authorization": f"Bearer {(await keys.create(owner, admin=admin)).key}"}


async def _flow(client: httpx.AsyncClient, headers: Headers) -> str:
    response = await client.post("/v1/flows", json=FLOW, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_an_admin_key_chooses_the_track_of_each_execution(
    client: httpx.AsyncClient, container: Container
) -> None:
    admin = await _headers(container.keys, "ops", admin=True)
    flow_id = await _flow(client, admin)
    for track in ("kafka", "dbos", "kafka"):
        body = {"flow_id": flow_id, "track": track}
        response = await client.post("/v1/executions", json=body, headers=admin)
        assert response.status_code == 201, response.text
        assert response.json()["track"] == track
        row = await container.executions.get(response.json()["id"])
        assert row.track == track
    # Without the field, the rollout settings decide, for admins too.
    response = await client.post("/v1/executions", json={"flow_id": flow_id}, headers=admin)
    assert response.json()["track"] == "dbos"


async def test_a_plain_key_choosing_the_track_gets_403_naming_the_field(
    client: httpx.AsyncClient, container: Container
) -> None:
    plain = await _headers(container.keys, "alice")
    flow_id = await _flow(client, plain)
    for track in ("kafka", "dbos"):
        body = {"flow_id": flow_id, "track": track}
        response = await client.post("/v1/executions", json=body, headers=plain)
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert error["code"] == "forbidden"
        assert "admin" in error["message"]
        assert error["details"] == [{"location": "track", "message": error["message"]}]
    # Nothing was created; without the field the same key works as before.
    assert (await client.get("/v1/executions", headers=plain)).json()["items"] == []
    response = await client.post("/v1/executions", json={"flow_id": flow_id}, headers=plain)
    assert response.status_code == 201, response.text
    assert response.json()["track"] == "dbos"


@pytest.mark.parametrize("track", ["rabbitmq", "KAFKA", "", 1, None])
async def test_a_track_that_is_not_one_of_the_two_is_422(
    client: httpx.AsyncClient, container: Container, track: object
) -> None:
    admin = await _headers(container.keys, "ops", admin=True)
    flow_id = await _flow(client, admin)
    response = await client.post(
        "/v1/executions", json={"flow_id": flow_id, "track": track}, headers=admin
    )
    if track is None:  # an explicit null means "let the settings decide"
        assert response.status_code == 201, response.text
        return
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert [d["location"] for d in error["details"]] == ["track"]


async def test_an_admin_key_still_sees_only_its_own_owner(
    client: httpx.AsyncClient, container: Container
) -> None:
    alice = await _headers(container.keys, "alice")
    admin = await _headers(container.keys, "ops", admin=True)
    flow_id = await _flow(client, alice)
    created = await client.post("/v1/executions", json={"flow_id": flow_id}, headers=alice)
    execution_id = created.json()["id"]
    assert (await client.get(f"/v1/executions/{execution_id}", headers=admin)).status_code == 404
    body = {"flow_id": flow_id, "track": "kafka"}
    response = await client.post("/v1/executions", json=body, headers=admin)
    assert response.status_code == 404  # another owner's flow: 404, never 403


async def test_the_key_store_records_and_reports_the_admin_flag(container: Container) -> None:
    keys = container.keys
    admin, plain = await keys.create("ops", admin=True), await keys.create("ops")
    assert (admin.is_admin, plain.is_admin) == (True, False)
    assert await keys.authenticate_key(admin.key) == Principal("ops", is_admin=True)
    assert await keys.authenticate_key(plain.key) == Principal("ops", is_admin=False)
    assert await keys.authenticate(admin.key) == "ops"  # the owner-only lookup is unchanged
    assert [k.is_admin for k in await keys.list("ops")] == [True, False]
    await keys.revoke("ops", admin.id)
    assert await keys.authenticate_key(admin.key) is None


async def test_a_key_store_that_only_knows_owners_yields_plain_callers() -> None:
    class OwnersOnly:
        async def authenticate(self, key: str) -> str | None:
            return {"tt_good": "alice"}.get(key)

    auth = ApiKeyAuthenticator(OwnersOnly())
    assert await auth.principal_of("tt_good") == Principal("alice", is_admin=False)
    assert await auth.owner_of("tt_good") == "alice"
    assert await auth.principal_of("tt_bad") is None


async def test_openapi_documents_the_field_and_the_403(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    create = spec["paths"]["/v1/executions"]["post"]
    assert "403" in create["responses"]
    schema = spec["components"]["schemas"]["CreateExecution"]["properties"]["track"]
    assert "admin" in schema["description"].lower()
