"""Creating under an idempotency key (`create_once`): one key, one execution, whatever happens.

The same rules run on PostgreSQL in tests/integration/api/test_retry_safety.py (concurrency
there is real) and end to end, in every mode, in tests/e2e/test_client.py.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.core.support import OWNER, new_flow, types_of
from twintrack.bootstrap import MemoryContainer
from twintrack.core.errors import NotFound
from twintrack.core.service import IdempotencyKeyReused, request_fingerprint
from twintrack.domain.execution import ExecutionOptions


async def test_the_same_key_gives_the_same_execution_once(app: MemoryContainer) -> None:
    flow_id = await new_flow(app)
    first, created = await app.service.create_once(OWNER, "k", flow_id)
    again, created_again = await app.service.create_once(OWNER, "k", flow_id)
    assert (created, created_again) == (True, False)
    assert again == first
    assert types_of(app, first.id) == ["execution.created"]
    other, _ = await app.service.create_once("bob", "k", await new_flow(app, owner="bob"))
    assert other.id != first.id  # keys are per owner


async def test_concurrent_creates_with_one_key_make_one_execution(app: MemoryContainer) -> None:
    flow_id = await new_flow(app)
    results = await asyncio.gather(
        *(app.service.create_once(OWNER, "k", flow_id) for _ in range(5))
    )
    assert len({record.id for record, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1
    assert len((await app.executions.list(OWNER)).items) == 1


async def test_another_request_under_the_key_is_refused(app: MemoryContainer) -> None:
    flow_id = await new_flow(app)
    await app.service.create_once(OWNER, "k", flow_id)
    with pytest.raises(IdempotencyKeyReused, match="'k'"):
        await app.service.create_once(OWNER, "k", flow_id, options=ExecutionOptions(debug=True))
    # Absent options and the defaults are one request.
    same, _ = await app.service.create_once(OWNER, "k", flow_id, options=ExecutionOptions())
    assert same.options == ExecutionOptions()


async def test_a_refused_create_frees_the_key_and_a_crashed_one_is_completed_on_retry(
    app: MemoryContainer,
) -> None:
    with pytest.raises(NotFound):
        await app.service.create_once(OWNER, "k", "fl_missing")
    flow_id = await new_flow(app)
    _, created = await app.service.create_once(OWNER, "k", flow_id)  # not "reused"
    assert created
    # A request that reserved its key and died before the row existed: the retry makes it.
    fingerprint = request_fingerprint(flow_id, None, None, [], None)
    await app.executions.reserve_key(OWNER, "k2", fingerprint, "ex_orphan", 3600)
    record, created = await app.service.create_once(OWNER, "k2", flow_id)
    assert (record.id, created) == ("ex_orphan", True)
    assert types_of(app, "ex_orphan") == ["execution.created"]


async def test_a_key_expires_after_its_ttl(app: MemoryContainer) -> None:
    flow_id = await new_flow(app)
    first, _ = await app.service.create_once(OWNER, "k", flow_id)
    app.service.idempotency_key_ttl_s = 0.0  # every key taken before now has expired
    second, created = await app.service.create_once(OWNER, "k", flow_id)
    assert created
    assert second.id != first.id
