"""One rollout guard and one shadow sweep per cluster (issue #12), on real worker processes.

Every worker stands for both roles (an advisory lock each, adapters/postgres/leader.py); only
the holder judges or refreshes the scorecard. Each process's own /metrics tells who did what:
the guard's verdict counter grows only in the process that recorded the verdict rows, and the
scorecard gauges exist only in the shadow sweep's leader (a follower has none). A SIGKILLed
leader's session ends with it, and the survivor takes both roles over.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tests.e2e import flows
from tests.e2e.stack import Stack, eventually, open_stack
from tests.e2e.test_live_rollout import owners_on_each_side
from twintrack.adapters.postgres.tables import GuardVerdictRow, WorkerRow
from twintrack.tooling.embedded._proc import free_port

pytestmark = pytest.mark.integration

#: (track, cohort, figure) -> value of one process's `twintrack_rollout_scorecard` gauges
Scorecard = dict[tuple[str, str, str], float]


async def scrape(port: int) -> tuple[float, Scorecard] | None:
    """(guard verdicts counted, scorecard gauges) from a worker's real /metrics; None while
    it does not answer yet."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            body = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    except httpx.TransportError:
        return None
    verdicts, card = 0.0, {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "twintrack_rollout_guard_verdicts_total":
                verdicts += sample.value
            elif sample.name == "twintrack_rollout_scorecard":
                labels = sample.labels
                card[labels["track"], labels["cohort"], labels["figure"]] = sample.value
    return verdicts, card


async def metrics(port: int) -> tuple[float, Scorecard]:
    scraped = await scrape(port)
    assert scraped is not None, f"no /metrics on {port}"
    return scraped


async def verdict_rows(stack: Stack) -> int:
    async with stack.container.sessions() as session:
        count = await session.scalar(select(func.count()).select_from(GuardVerdictRow))
    return int(count or 0)


async def registered(stack: Stack, pid: int) -> bool:
    """The worker process registered, i.e. its guard and shadow loops are running."""
    async with stack.container.sessions() as session:
        found = await session.scalar(
            select(WorkerRow.worker_id).where(WorkerRow.pid == pid, WorkerRow.stopped_at.is_(None))
        )
    return found is not None


async def leads_both(port: int, executions: int | None = None) -> bool:
    """This process judges (its verdict counter grows) and publishes the scorecard (with
    `executions` Kafka-routed ones, when given)."""
    scraped = await scrape(port)
    if scraped is None:
        return False
    verdicts, card = scraped
    routed = card.get(("kafka", "routed", "executions"))
    return verdicts > 0 and bool(card) and (executions is None or routed == executions)


async def bracket(stack: Stack, port: int) -> tuple[float, int, float]:
    """(the verdicts `port` counted, the verdict rows, what it counted then): its counter is
    incremented right after each insert, so its rows at the count are within [first, then + 1]."""
    counted_first, _ = await metrics(port)
    rows = await verdict_rows(stack)
    counted_then, _ = await metrics(port)
    return counted_first, rows, counted_then


async def test_one_guard_and_one_shadow_sweep_per_cluster_and_they_fail_over_on_sigkill(
    base_env: dict[str, str], logs: Path
) -> None:
    env = {
        **base_env,
        "DBOS_ROLLOUT_PERCENT": "50",  # DBOS receives a share: the guard judges every round
        "GUARD_ENABLED": "true",
        "GUARD_INTERVAL_S": "0.2",
        "SHADOW_INTERVAL_S": "0.2",
        "SCORECARD_REFRESH_S": "0.2",
        "WORKER_TRACKS": "kafka",  # the roles do not depend on the tracks served
    }
    async with open_stack(env, logs) as stack:
        ports = {"first": free_port(), "second": free_port()}
        first = stack.spawn_worker_process(
            "first", env={"WORKER_METRICS_PORT": str(ports["first"])}
        )
        await eventually(lambda: leads_both(ports["first"]), timeout=30)
        second = stack.spawn_worker_process(
            "second", env={"WORKER_METRICS_PORT": str(ports["second"])}
        )

        # Two Kafka-cohort executions, for figures the scorecard gauges must show.
        _, outside = owners_on_each_side(50)
        api = type(stack.api)(stack.api.client, (await stack.container.keys.create(outside)).key)
        flow_id = await api.create_flow(flows.three_nodes())
        for _ in range(2):
            row = await api.create(flow_id)
            assert row["track"] == "kafka"
            assert await api.command(row["id"], "start") == 202
            await api.wait_status(row["id"], "completed", 30)
        await eventually(lambda: leads_both(ports["first"], executions=2), timeout=10)
        _, card = await metrics(ports["first"])
        assert card["kafka", "routed", "error_rate"] == 0.0
        assert card["dbos", "all", "executions"] == 0.0  # every track's rows, even empty
        assert {cohort for _, cohort, _ in card} == {"all", "routed", "rerouted", "fallback"}

        # The second worker (started meanwhile) contends for both roles, many rounds long, and
        # wins neither.
        await eventually(lambda: registered(stack, second.pid), timeout=30)
        await eventually(lambda: scrape(ports["second"]), timeout=10)
        contended_from = await verdict_rows(stack)

        async def rounds_later() -> bool:
            return await verdict_rows(stack) >= contended_from + 10

        await eventually(rounds_later, timeout=15)
        assert await metrics(ports["second"]) == (0.0, {})  # judged nothing, publishes nothing
        low, rows, high = await bracket(stack, ports["first"])
        assert low <= rows <= high + 1, (low, rows, high)  # every row is the first's

        # The leader dies without a word; its session, and both locks, end with it.
        os.kill(first.pid, signal.SIGKILL)
        await asyncio.to_thread(first.wait, 10)
        low_before, before, high_before = await bracket(stack, ports["second"])
        await eventually(lambda: leads_both(ports["second"], executions=2), timeout=15)
        await eventually(lambda: _more_rows(stack, before + 3), timeout=10)
        # Every row since is the second's (whether it had taken over by `before` or not).
        low, rows, high = await bracket(stack, ports["second"])
        assert low - high_before - 1 <= rows - before <= high + 1 - low_before, (
            low_before,
            before,
            high_before,
            low,
            rows,
            high,
        )
        _, card = await metrics(ports["second"])
        assert card["kafka", "routed", "error_rate"] == 0.0


async def _more_rows(stack: Stack, at_least: int) -> bool:
    return await verdict_rows(stack) >= at_least
