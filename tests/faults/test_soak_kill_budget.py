"""The chaos soak's kills on a real deployment (both DBOS modes): they interrupt runs, they
never spend all of one execution's attempts (issue #8 item 4).

The soak kills "the worker holding the most claims" as soon as its interval is due. Late in the
load only one execution may be left running; on the DBOS track it is taken over a few seconds
after each kill (registry silence, sweep, lease), so a kill is already due when it is taken and
lands right after the claim, run after run, until MAX_ATTEMPTS real runs have failed and the
execution is, correctly, given up: the soak then reported its own kills as a flow failure.
Here the soak's own `_kill` is called as often as it can kill (no pacing, the worst case) while
one execution runs; it must stop at the soak's kill budget and let the execution complete, each
kill of its holder costing exactly one attempt."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from bench.chaos import SoakServers
from bench.config import DBOS_KAFKA_EVENTS, DBOS_STREAMS, SoakSizes
from bench.config import Mode as BenchMode
from bench.infra import Deployment
from bench.soak import Soak, soak_flow

from tests.e2e.conftest import MODES
from tests.e2e.stack import FINISHED, eventually, open_stack
from tests.faults.recovery_helpers import env_for, worker_id_of
from twintrack.tooling.embedded.discovery import ProvidedBroker

BENCH_MODES: dict[str, BenchMode] = {"dbos": DBOS_KAFKA_EVENTS, "dbos-streams": DBOS_STREAMS}
MAX_ATTEMPTS = 4


@pytest.fixture(params=list(BENCH_MODES))
def fault_env(
    request: pytest.FixtureRequest,
    database_url: str,
    kafka_broker: ProvidedBroker,
    unique_name: Callable[[str], str],
) -> tuple[str, dict[str, str]]:
    return request.param, env_for(MODES[request.param], database_url, kafka_broker, unique_name)


@pytest.mark.timeout(90)
async def test_the_soak_never_kills_one_execution_out_of_its_attempts(
    fault_env: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    mode, env = fault_env
    async with open_stack(env, tmp_path, MAX_ATTEMPTS=str(MAX_ATTEMPTS)) as stack:
        deployment = Deployment(stack, BENCH_MODES[mode], stack.env)
        for proc in [deployment.spawn_worker(), deployment.spawn_worker()]:
            await worker_id_of(stack, proc)
        sizes = SoakSizes(settings={"MAX_ATTEMPTS": str(MAX_ATTEMPTS)})
        # `own` (the soak's own servers) is only used by the PostgreSQL and broker faults
        soak = Soak(deployment, cast(SoakServers, None), sizes)
        try:
            api = stack.api
            flow_id = await api.create_flow(soak_flow("chased", delay_ms=2_000))
            ex = (await api.create(flow_id))["id"]
            assert await api.command(ex, "start") == 202

            async def chased() -> dict[str, Any] | None:
                row = await api.get(ex)
                if row["status"] in FINISHED:
                    return row
                await soak._kill()  # kills the holder the moment a worker takes the claim
                return None

            row: dict[str, Any] = await eventually(chased, timeout=70, every=0.1)
        finally:
            await soak.close()
        kills = [k for k in soak.timeline.kills if ex in k.held]
        assert row["status"] == "completed", (row, kills)
        assert len(kills) == soak.kill_budget == MAX_ATTEMPTS // 2
        assert row["attempt"] == len(kills) + 1  # each kill of its holder: one attempt
