"""What makes the API safe to retry and cheap to wait on, over real PostgreSQL: idempotency keys
on create, and the long-poll `GET /v1/executions/{id}?wait=N`.

The ports are in-memory (as in test_api.py); both tracks are covered end to end through the
client in tests/e2e/test_client.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tests.integration.api.test_api import (
    FLOW,
    Container,
    Headers,
    assert_error,
    build_container,
    client_for,
    finish,
    new_execution,
    new_flow,
)
from twintrack.adapters.postgres.tables import IdempotencyKeyRow
from twintrack.core.service import request_fingerprint
from twintrack.domain.execution import EventsBackend, ExecutionStatus
from twintrack.entrypoints.api.routes import executions as execution_routes
from twintrack.entrypoints.api.waits import EndWatch

pytestmark = pytest.mark.integration

KEY = "Idempotency-Key"
Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
def container(db_engine: AsyncEngine) -> Container:
    return build_container(db_engine)


@pytest_asyncio.fixture
async def client(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(container) as http:
        yield http


async def _key(container: Container, owner: str) -> Headers:
    return {"Authorization": f"Bearer {(await container.keys.create(owner)).key}"}


async def _count(container: Container, owner: str) -> int:
    page = await container.executions.list(owner, limit=100)
    return len(page.items)


# -- idempotency keys -----------------------------------------------------------------------


async def test_the_same_key_answers_with_the_same_execution(
    client: httpx.AsyncClient, container: Container
) -> None:
    alice = await _key(container, "alice")
    flow_id = await new_flow(client, alice)
    body = {"flow_id": flow_id, "options": {"inputs": {"x": 4}}}
    first = await client.post("/v1/executions", json=body, headers={**alice, KEY: "k-1"})
    again = await client.post("/v1/executions", json=body, headers={**alice, KEY: "k-1"})
    assert first.status_code == again.status_code == 201, (first.text, again.text)
    assert first.json() == again.json()
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await _count(container, "alice") == 1
    # The replay reports the execution as it is now, not as it was.
    await finish(container.executions, first.json()["id"])
    later = await client.post("/v1/executions", json=body, headers={**alice, KEY: "k-1"})
    assert later.json()["status"] == "completed"
    # Another key, or no key, is another execution.
    other = await client.post("/v1/executions", json=body, headers={**alice, KEY: "k-2"})
    assert other.json()["id"] != first.json()["id"]
    plain = await new_execution(client, alice, flow_id, options={"inputs": {"x": 4}})
    assert plain["id"] not in {first.json()["id"], other.json()["id"]}
    # `options` left out and `options` at their defaults are the same request.
    bare = await client.post(
        "/v1/executions", json={"flow_id": flow_id}, headers={**alice, KEY: "d"}
    )
    defaults = {"flow_id": flow_id, "options": {"max_concurrency": 8}}
    same = await client.post("/v1/executions", json=defaults, headers={**alice, KEY: "d"})
    assert bare.json()["id"] == same.json()["id"]


async def test_a_key_with_another_body_is_refused_naming_the_header(
    client: httpx.AsyncClient, container: Container
) -> None:
    alice = await _key(container, "alice")
    flow_id = await new_flow(client, alice)
    headers = {**alice, KEY: "k"}
    await client.post("/v1/executions", json={"flow_id": flow_id}, headers=headers)
    changed = {"flow_id": flow_id, "options": {"debug": True}}
    response = await client.post("/v1/executions", json=changed, headers=headers)
    error = assert_error(response, 422, "idempotency_key_reused")
    assert error["details"][0]["location"] == "header.Idempotency-Key"
    assert "'k'" in error["message"]
    assert await _count(container, "alice") == 1


async def test_keys_belong_to_their_owner(client: httpx.AsyncClient, container: Container) -> None:
    alice, bob = await _key(container, "alice"), await _key(container, "bob")
    alice_flow, bob_flow = await new_flow(client, alice), await new_flow(client, bob)
    a = await client.post(
        "/v1/executions", json={"flow_id": alice_flow}, headers={**alice, KEY: "k"}
    )
    b = await client.post("/v1/executions", json={"flow_id": bob_flow}, headers={**bob, KEY: "k"})
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]
    assert "Idempotent-Replayed" not in b.headers


async def test_concurrent_creates_with_one_key_make_one_execution(
    client: httpx.AsyncClient, container: Container
) -> None:
    alice = await _key(container, "alice")
    flow_id = await new_flow(client, alice)
    headers = {**alice, KEY: "together"}

    async def create() -> httpx.Response:
        return await client.post("/v1/executions", json={"flow_id": flow_id}, headers=headers)

    responses = await asyncio.gather(*(create() for _ in range(8)))
    assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    assert await _count(container, "alice") == 1
    # execution.created was published (once per writer at most; subscribers dedupe by index).
    execution_id = responses[0].json()["id"]
    bus = container.ports.buses[EventsBackend(responses[0].json()["events_backend"])]
    assert [e.index for e in bus.of(execution_id)] == [0]


async def test_a_create_that_failed_frees_its_key(
    client: httpx.AsyncClient, container: Container
) -> None:
    alice = await _key(container, "alice")
    headers = {**alice, KEY: "k"}
    missing = await client.post("/v1/executions", json={"flow_id": "fl_nope"}, headers=headers)
    assert_error(missing, 404, "not_found")
    flow_id = await new_flow(client, alice)
    # Not `idempotency_key_reused`: the failed request left nothing behind to protect.
    created = await client.post("/v1/executions", json={"flow_id": flow_id}, headers=headers)
    assert created.status_code == 201, created.text
    assert "Idempotent-Replayed" not in created.headers


async def test_a_create_that_failed_on_an_outage_keeps_its_key_for_the_retry(
    client: httpx.AsyncClient, container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 503 may hide a create that is still going on (or that committed): the retry must
    land on the id the key reserved, never make a second execution."""
    alice = await _key(container, "alice")
    flow_id = await new_flow(client, alice)
    service = container.service
    real_create = service.create
    calls = 0

    async def stalled_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TimeoutError("the broker did not answer in time")
        return await real_create(*args, **kwargs)

    monkeypatch.setattr(service, "create", stalled_once)
    headers = {**alice, KEY: "k"}
    refused = await client.post("/v1/executions", json={"flow_id": flow_id}, headers=headers)
    assert_error(refused, 503, "unavailable")
    reserved = await container.executions.reserve_key("alice", "k", "", "ex_other", 3600)
    assert not reserved.reserved  # still held by the failed request
    retried = await client.post("/v1/executions", json={"flow_id": flow_id}, headers=headers)
    assert retried.status_code == 201, retried.text
    assert retried.json()["id"] == reserved.execution_id
    assert await _count(container, "alice") == 1


async def test_a_request_that_finds_its_key_but_no_execution_creates_it_under_that_id(
    client: httpx.AsyncClient, container: Container
) -> None:
    """The first request reserved the key, then its process died before the row existed."""
    alice = await _key(container, "alice")
    flow_id = await new_flow(client, alice)
    fingerprint = request_fingerprint(flow_id, None, None, [], None)
    held = await container.executions.reserve_key("alice", "k", fingerprint, "ex_orphan", 3600)
    assert held.reserved
    response = await client.post(
        "/v1/executions", json={"flow_id": flow_id}, headers={**alice, KEY: "k"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["id"] == "ex_orphan"


async def test_a_key_expires_after_its_ttl(
    client: httpx.AsyncClient, container: Container, session_factory: Sessions
) -> None:
    alice = await _key(container, "alice")
    flow_id = await new_flow(client, alice)
    headers = {**alice, KEY: "k"}
    first = await client.post("/v1/executions", json={"flow_id": flow_id}, headers=headers)
    aged = timedelta(seconds=container.service.idempotency_key_ttl_s + 1)
    async with session_factory.begin() as session:  # as if used a day and a second ago
        await session.execute(update(IdempotencyKeyRow).values(created_at=func.now() - aged))
    second = await client.post("/v1/executions", json={"flow_id": flow_id}, headers=headers)
    assert second.status_code == 201
    assert second.json()["id"] != first.json()["id"]
    assert "Idempotent-Replayed" not in second.headers
    async with session_factory() as session:
        keys = (await session.execute(select(IdempotencyKeyRow.execution_id))).scalars().all()
    assert keys == [second.json()["id"]]  # taken over in place


async def test_malformed_keys_are_400(client: httpx.AsyncClient, container: Container) -> None:
    alice = await _key(container, "alice")
    flow_id = await new_flow(client, alice)
    for bad in ["", "x" * 256, "with space", "tab\tkey"]:
        response = await client.post(
            "/v1/executions", json={"flow_id": flow_id}, headers={**alice, KEY: bad}
        )
        error = assert_error(response, 400, "invalid_parameter")
        assert error["details"][0]["location"] == "header.Idempotency-Key", bad


# -- long-poll ------------------------------------------------------------------------------


async def test_wait_answers_as_soon_as_the_execution_ends(
    client: httpx.AsyncClient, container: Container
) -> None:
    alice = await _key(container, "alice")
    execution_id = (await new_execution(client, alice, await new_flow(client, alice)))["id"]
    watch: EndWatch = client._transport.app.state.end_watch  # type: ignore[attr-defined]
    waiting = asyncio.create_task(
        client.get(f"/v1/executions/{execution_id}", params={"wait": 20}, headers=alice)
    )
    deadline = time.monotonic() + 10
    while watch.waiting == 0:  # the request is parked on the watch
        assert time.monotonic() < deadline, "the long-poll never started waiting"
        await asyncio.sleep(0.005)
    assert not waiting.done()
    ended = time.monotonic()
    await finish(container.executions, execution_id, ExecutionStatus.FAILED)
    response = await waiting
    assert time.monotonic() - ended < 1.0
    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    assert watch.waiting == 0


async def test_wait_on_a_finished_execution_answers_at_once(
    client: httpx.AsyncClient, container: Container
) -> None:
    alice = await _key(container, "alice")
    execution_id = (await new_execution(client, alice, await new_flow(client, alice)))["id"]
    await finish(container.executions, execution_id)
    started = time.monotonic()
    response = await client.get(f"/v1/executions/{execution_id}?wait=30", headers=alice)
    assert time.monotonic() - started < 1.0
    assert response.json()["status"] == "completed"


async def test_wait_answers_with_the_current_row_after_the_wait_and_is_capped(
    client: httpx.AsyncClient, container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await _key(container, "alice")
    execution_id = (await new_execution(client, alice, await new_flow(client, alice)))["id"]
    started = time.monotonic()
    response = await client.get(f"/v1/executions/{execution_id}?wait=0.3", headers=alice)
    assert 0.3 <= time.monotonic() - started < 5
    assert response.status_code == 200
    assert response.json()["status"] == "created"
    # Whatever is asked, the wait is at most MAX_WAIT_S (made short here).
    monkeypatch.setattr(execution_routes, "MAX_WAIT_S", 0.2)
    started = time.monotonic()
    response = await client.get(f"/v1/executions/{execution_id}?wait=3600", headers=alice)
    assert time.monotonic() - started < 5
    assert response.json()["status"] == "created"


async def test_bad_waits_are_400_and_other_owners_404(
    client: httpx.AsyncClient, container: Container
) -> None:
    alice, bob = await _key(container, "alice"), await _key(container, "bob")
    execution_id = (await new_execution(client, alice, await new_flow(client, alice, FLOW)))["id"]
    for bad in ["-1", "nan", "inf", "soon"]:
        response = await client.get(f"/v1/executions/{execution_id}?wait={bad}", headers=alice)
        error = assert_error(response, 400, "invalid_parameter")
        assert error["details"][0]["location"] == "query.wait", bad
    response = await client.get(f"/v1/executions/{execution_id}?wait=5", headers=bob)
    assert_error(response, 404, "not_found")
