"""A DBOS-track start whose enqueue fails (DBOS's system database refuses the workflow): the
row is already `queued`, so the repair sweep (adapters/dbos/recovery.py) delivers its workflow
once DBOS accepts it again; the execution completes exactly once, never `queued` forever. The
same sweep rewinds a workflow that ended before its run began (its step hit a database error).

The faults are real: a trigger makes PostgreSQL refuse DBOS's enqueue of this one workflow (or
the step's claim), as a database that refuses writes would."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.e2e import flows
from tests.e2e.conftest import MODES
from tests.e2e.stack import Stack, assert_contiguous, eventually, open_stack
from tests.faults.recovery_helpers import audits, env_for
from twintrack.tooling.embedded.discovery import ProvidedBroker


@pytest.fixture(params=["dbos", "dbos-streams"])
def fault_env(
    request: pytest.FixtureRequest,
    database_url: str,
    kafka_broker: ProvidedBroker,
    unique_name: Callable[[str], str],
) -> dict[str, str]:
    return env_for(MODES[request.param], database_url, kafka_broker, unique_name)


_REFUSE = (
    "CREATE FUNCTION refuse_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN RAISE EXCEPTION 'workflow % refused by the test', NEW.workflow_uuid; END $$",
    "CREATE TRIGGER refuse_enqueue BEFORE INSERT OR UPDATE ON dbos.workflow_status"
    " FOR EACH ROW WHEN (NEW.workflow_uuid = '{ex}' AND NEW.status = 'ENQUEUED')"
    " EXECUTE FUNCTION refuse_enqueue()",
)


async def _sql(stack: Stack, *statements: str) -> None:
    async with stack.container.db_engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))


@pytest.mark.timeout(90)
async def test_a_start_whose_enqueue_failed_is_delivered_by_the_repair_sweep(
    fault_env: dict[str, str], tmp_path: Path
) -> None:
    async with open_stack(fault_env, tmp_path, DBOS_REPAIR_QUEUED_S="1") as stack:
        await stack.add_worker()
        api = stack.api
        ex = (await api.create(await api.create_flow(flows.crashable(ms=100))))["id"]
        watching = api.watch(ex)
        await _sql(stack, *(s.format(ex=ex) for s in _REFUSE))
        # DBOS refused the workflow: the start is stored and will be delivered, so the answer
        # is "retry later", never an internal error.
        refused = await api.client.post(f"/v1/executions/{ex}/start", headers=api.auth)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "unavailable"
        assert "will be delivered" in refused.json()["error"]["message"]
        assert (await api.get(ex))["status"] == "queued"  # started, but on no queue

        await _sql(stack, "DROP TRIGGER refuse_enqueue ON dbos.workflow_status")
        row = await api.wait_status(ex, {"completed", "failed"}, timeout=30)
        assert row["status"] == "completed", row
        assert row["attempt"] == 1
        events = await watching
        assert_contiguous(events)
        assert [e["type"] for e in events].count("execution.completed") == 1
        assert await stack.container.counters.get("after") == 1
        repairs = [(a.reason, a.detail) for a in await audits(stack, ex)]
        if fault_env.get("EXECUTION_EVENTS_BACKEND") == "dbos":
            # The parked workflow's delay was already set to 0 before the refused release, so
            # DBOS's own queue thread may release it as soon as the trigger is gone, before
            # the sweep looks: either way it runs once, and at most one repair is recorded.
            assert len(repairs) <= 1, repairs
        else:
            assert len(repairs) == 1, repairs
        for reason, detail in repairs:
            assert reason == "repair_queued"
            assert detail in {"enqueued its missing workflow", "released its parked workflow"}


_REFUSE_CLAIM = (
    "CREATE FUNCTION refuse_claim() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN RAISE EXCEPTION 'claim of % refused by the test', NEW.execution_id; END $$",
    "CREATE TRIGGER refuse_claim BEFORE INSERT OR UPDATE ON execution_claims"
    " FOR EACH ROW WHEN (NEW.execution_id = '{ex}') EXECUTE FUNCTION refuse_claim()",
)


async def _workflow_status(stack: Stack, ex: str) -> str | None:
    async with stack.container.db_engine.connect() as conn:
        status: str | None = await conn.scalar(
            text("SELECT status FROM dbos.workflow_status WHERE workflow_uuid = :id"), {"id": ex}
        )
    return status


@pytest.mark.timeout(90)
async def test_a_workflow_whose_step_failed_before_the_run_is_rewound_and_runs_once(
    fault_env: dict[str, str], tmp_path: Path
) -> None:
    """The step's claim hits a database error: DBOS ends the workflow ERROR while the row still
    says `queued`. The repair sweep rewinds that workflow (same id), and it runs once."""
    async with open_stack(fault_env, tmp_path, DBOS_REPAIR_QUEUED_S="1") as stack:
        await stack.add_worker()
        api = stack.api
        ex = (await api.create(await api.create_flow(flows.crashable(ms=100))))["id"]
        watching = api.watch(ex)
        await _sql(stack, *(s.format(ex=ex) for s in _REFUSE_CLAIM))
        assert await api.command(ex, "start") == 202
        await eventually(lambda: _is(_workflow_status(stack, ex), "ERROR"), timeout=20)
        assert (await api.get(ex))["status"] == "queued"

        await _sql(stack, "DROP TRIGGER refuse_claim ON execution_claims")
        row = await api.wait_status(ex, {"completed", "failed"}, timeout=30)
        assert row["status"] == "completed", row
        assert row["attempt"] == 1
        events = await watching
        assert_contiguous(events)
        assert await stack.container.counters.get("after") == 1
        repairs = [(a.reason, a.detail) for a in await audits(stack, ex)]
        assert repairs == [("repair_queued", "rewound its ERROR workflow")]


async def _is(value: Awaitable[str | None], expected: str) -> bool:
    return await value == expected
