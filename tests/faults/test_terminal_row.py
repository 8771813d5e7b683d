"""Once a subscriber has the terminal event, `GET /v1/executions/{id}` shows the ending (DESIGN
§1.9), however the execution ended: run to completion or failure by a worker, or stopped."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import flows
from tests.e2e.conftest import Mode, base_env, env, logs, mode  # noqa: F401
from tests.e2e.stack import Api, open_stack

ENDINGS = {
    "execution.completed": "completed",
    "execution.failed": "failed",
    "execution.stopped": "stopped",
}
PER_KIND = 10


async def _row_when_ending_arrives(api: Api, ex: str, subscribed: asyncio.Event) -> tuple[str, Any]:
    """Follow the stream; the moment the terminal event arrives, read the row."""
    url = f"/v1/executions/{ex}/events"
    async with asyncio.timeout(30), api.client.stream("GET", url, headers=api.auth) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if event["index"] == 0:
                subscribed.set()
            if event["type"] in ENDINGS:
                return event["type"], (await api.get(ex))["status"]
    raise AssertionError(f"the stream of {ex} ended without a terminal event")


async def _start(api: Api, ex: str, slots: asyncio.Semaphore) -> None:
    """Start it, a few at a time: every start of an owner takes the owner's running-count lock
    in turn, and thirty at once made the last ones wait out its bound (OWNER_LOCK_WAIT_S) on a
    busy machine. A 503 says retry, so a client does."""
    async with slots:
        for _ in range(3):
            code = await api.command(ex, "start")
            if code != 503:
                break
    assert code == 202, f"start of {ex} answered {code}"


@pytest.mark.timeout(120)
async def test_the_row_shows_the_ending_once_the_stream_delivered_it(
    env: dict[str, str],  # noqa: F811
    logs: Path,  # noqa: F811
) -> None:
    async with open_stack(env, logs) as stack:
        api = stack.api
        await stack.add_worker()
        kinds = {
            "completed": await api.create_flow(flows.three_nodes()),
            "failed": await api.create_flow(
                flows.flow("boom", [("boom", "fail", {"message": "boom"})], [])
            ),
            "stopped": await api.create_flow(flows.long_delay(60_000)),
        }
        executions = [
            (kind, (await api.create(flow_id))["id"])
            for kind, flow_id in kinds.items()
            for _ in range(PER_KIND)
        ]
        subscribed = {ex: asyncio.Event() for _, ex in executions}
        watchers = [
            asyncio.create_task(_row_when_ending_arrives(api, ex, subscribed[ex]))
            for _, ex in executions
        ]
        await asyncio.wait_for(asyncio.gather(*(s.wait() for s in subscribed.values())), 30)
        # Start them all, then stop the long ones: some stops find them queued (the API ends
        # them), some running (their worker does).
        slots = asyncio.Semaphore(5)
        await asyncio.gather(*(_start(api, ex, slots) for _, ex in executions))
        await asyncio.gather(
            *(api.command(ex, "stop") for kind, ex in executions if kind == "stopped")
        )

        seen = await asyncio.gather(*watchers)
        assert [ENDINGS[ending] for ending, _ in seen] == [kind for kind, _ in executions]
        assert [status for _, status in seen] == [kind for kind, _ in executions]
