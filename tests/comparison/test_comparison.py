"""The comparison suite (issue 5): every catalog flow behaves identically in the three modes.

One deployment per mode for the whole module — Kafka tasks + Kafka events, DBOS tasks + Kafka
events, DBOS tasks + DBOS streams — each on a fresh database and topic prefix, opened one after
the other (DBOS is one runtime per process). Each runs the whole catalog through the HTTP API;
then one test per flow compares the runs: the normalized event streams of the execution and
its descendants, the final status, outputs and error must be identical to the Kafka mode's
(the legacy track is the reference), and a mismatch fails with a readable diff.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.comparison import catalog
from tests.comparison.catalog import Scenario
from tests.comparison.driver import run_scenario
from tests.e2e.conftest import MODES, Mode
from tests.e2e.stack import open_stack, stack_env
from tests.fixtures.database import ServerWithUrl, _copy_database, _drop_database
from twintrack.adapters.postgres.db import with_database
from twintrack.domain.comparison import (
    Ordering,
    RunResult,
    compare_runs,
    summary_lines,
    tree_lines,
)
from twintrack.tooling.embedded.discovery import ProvidedBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCENARIOS = catalog.catalog()
REFERENCE = "kafka"

Runs = dict[str, dict[str, RunResult]]  # flow name -> mode name -> run


async def _run_mode(
    mode: Mode,
    pg_server: ServerWithUrl,
    admin_engine: AsyncEngine,
    template_database: str,
    kafka_broker: ProvidedBroker,
    logs: Path,
) -> dict[str, RunResult]:
    database = await _copy_database(admin_engine, template_database)
    try:
        env = {
            **stack_env(
                with_database(pg_server.url, database),
                kafka_broker.bootstrap_servers,
                f"cmp_{uuid.uuid4().hex[:12]}",
                kafka_broker.capabilities.idempotence,
            ),
            **mode.env,
        }
        async with open_stack(env, logs) as stack:
            await stack.add_worker()
            return {s.name: await run_scenario(stack.api, s) for s in SCENARIOS}
    finally:
        await _drop_database(admin_engine, database)


@pytest_asyncio.fixture(scope="module")
async def runs(
    pg_server: ServerWithUrl,
    admin_engine: AsyncEngine,
    template_database: str,
    kafka_broker: ProvidedBroker,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Runs]:
    """The whole catalog, run once in each mode."""
    logs = tmp_path_factory.mktemp("comparison-logs")
    results: Runs = {s.name: {} for s in SCENARIOS}
    for mode in MODES.values():
        began = time.monotonic()
        try:
            by_flow = await _run_mode(
                mode, pg_server, admin_engine, template_database, kafka_broker, logs
            )
        except Exception as exc:  # every flow's test reports it, next to the other modes
            failed = RunResult(status="(not run)", failure=f"deployment: {exc!r}")
            by_flow = {s.name: failed for s in SCENARIOS}
        for name, run in by_flow.items():
            results[name][mode.name] = run
        print(f"comparison: mode {mode.name} ran the catalog in {time.monotonic() - began:.1f}s")
    _dump(results, logs)
    yield results


def _dump(results: Runs, where: Path) -> None:
    """Each run's normalized streams as text, `<logs>/<flow>/<mode>.txt`, to read or diff."""
    for name, by_mode in results.items():
        folder = where / name
        folder.mkdir(exist_ok=True)
        for mode, run in by_mode.items():
            lines = [*summary_lines(run), *tree_lines(run)]
            (folder / f"{mode}.txt").write_text("\n".join(lines) + "\n")
    print(f"comparison: normalized runs in {where}")


def _check_expectations(scenario: Scenario, run: RunResult) -> list[str]:
    """The reference run does what the scenario says (all modes equally wrong is wrong too)."""
    expect, problems = scenario.expect, []
    if run.status != expect.status:
        problems.append(f"status {run.status!r}, expected {expect.status!r}")
    if expect.outputs is not None and run.outputs != expect.outputs:
        problems.append(f"outputs {run.outputs!r}, expected {expect.outputs!r}")
    if expect.error_node_id is not None and run.error_node_id != expect.error_node_id:
        problems.append(f"error at {run.error_node_id!r}, expected {expect.error_node_id!r}")
    if len(run.children) != expect.descendants:
        problems.append(f"{len(run.children)} descendants, expected {expect.descendants}")
    return problems


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_flow_behaves_identically_in_every_mode(scenario: Scenario, runs: Runs) -> None:
    by_mode = runs[scenario.name]
    report = compare_runs(by_mode, reference=REFERENCE, ordering=scenario.ordering)
    assert report.ok, f"{scenario.name}: the modes differ\n{report.render()}"
    problems = _check_expectations(scenario, by_mode[REFERENCE])
    assert not problems, f"{scenario.name}: {'; '.join(problems)}\n{report.render()}"
    if scenario.ordering is not Ordering.STRICT:
        strict = compare_runs(by_mode, reference=REFERENCE, ordering=Ordering.STRICT)
        if not strict.ok:
            warnings.warn(
                f"{scenario.name}: equal per node, but interleaved differently\n{strict.render()}",
                stacklevel=1,
            )
