"""Run one catalog scenario through the HTTP API of a deployment, as a user would."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.comparison.catalog import Scenario, matches
from tests.e2e.stack import FINISHED, TERMINAL, Api
from twintrack.domain.comparison import RunResult

RUN_TIMEOUT_S = 60.0


class Follower:
    """Reads an execution's SSE stream in the background, from index 0 to the terminal event."""

    def __init__(self, api: Api, execution_id: str, events: list[dict[str, Any]]) -> None:
        self.api = api
        self.execution_id = execution_id
        self.events = events
        self._changed = asyncio.Condition()
        self._ended = False
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        url = f"/v1/executions/{self.execution_id}/events"
        try:
            async with self.api.client.stream("GET", url, headers=self.api.auth) as response:
                assert response.status_code == 200, await response.aread()
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        async with self._changed:
                            self.events.append(json.loads(line[5:]))
                            self._changed.notify_all()
        finally:
            async with self._changed:
                self._ended = True
                self._changed.notify_all()

    async def wait_for(self, pattern: dict[str, Any], after: int) -> int:
        """The position of the first event after position `after` that matches `pattern`."""
        async with self._changed:
            while True:
                for position in range(after + 1, len(self.events)):
                    if matches(self.events[position], pattern):
                        return position
                if self._ended:
                    self._task.result()  # raises what ended the stream early, if anything
                    seen = [(e["index"], e["type"], e["data"]) for e in self.events]
                    raise AssertionError(f"the stream ended without {pattern}: {seen}")
                await self._changed.wait()

    async def finish(self) -> list[dict[str, Any]]:
        await self._task
        return self.events

    def cancel(self) -> None:
        self._task.cancel()


async def _descendants(api: Api, root_events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Every descendant's whole stream, breadth first, children in spawn order."""
    streams: list[list[dict[str, Any]]] = []
    frontier = [root_events]
    while frontier:
        spawned = [
            str(e["data"]["child_execution_id"])
            for stream in frontier
            for e in stream
            if e["type"] == "child.spawned"
        ]
        frontier = [await api.events(child) for child in spawned]
        streams.extend(frontier)
    return streams


async def _drive(api: Api, scenario: Scenario, seen: list[dict[str, Any]]) -> RunResult:
    flow_id = await api.create_flow(scenario.flow)
    execution_id = (await api.create(flow_id, options=scenario.options))["id"]
    follower = Follower(api, execution_id, seen)
    try:
        code = await api.command(execution_id, "start")
        assert code == 202, f"start answered {code}"
        position = -1
        for step in scenario.script:
            if "wait_for" in step:
                position = await follower.wait_for(step["wait_for"], position)
            else:
                code = await api.command(execution_id, step["command"], step.get("reason"))
                assert code == 202, f"{step['command']} answered {code}"
        events = await follower.finish()
    finally:
        follower.cancel()
    assert events, "the stream ended empty"
    assert events[-1]["type"] in TERMINAL, "the stream did not end with a terminal event"
    row = await api.wait_status(execution_id, FINISHED)
    return RunResult.from_row(row, events, await _descendants(api, events))


async def run_scenario(api: Api, scenario: Scenario, timeout: float = RUN_TIMEOUT_S) -> RunResult:
    """Run it to the end; a run that cannot be driven is a RunResult with `failure` set and
    the root's events seen so far."""
    seen: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            return await _drive(api, scenario, seen)
    except Exception as exc:  # reported by the comparison, next to the other modes' runs
        return RunResult(
            status="(not run)", events=list(seen), failure=f"{type(exc).__name__}: {exc!r}"
        )
