"""Driving executions through the API as a user does: create, subscribe, start, read events."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tests.e2e.stack import Api

from bench.sse import Received, subscribe


@dataclass(frozen=True)
class Run:
    """One execution, created, watched from before its start, and followed to its end."""

    execution_id: str
    t_create: float  # time.time() just before POST /v1/executions
    t_created: float  # 201 received
    t_opened: float  # SSE response headers received; POST /start follows at once
    t_started: float  # 202 received
    events: list[Received]

    @property
    def terminal(self) -> Received:
        return self.events[-1]

    def at(self, event_type: str) -> Received:
        return next(r for r in self.events if r.type == event_type)


async def start(api: Api, execution_id: str) -> None:
    status = await api.command(execution_id, "start")
    if status != 202:
        raise RuntimeError(f"start {execution_id}: HTTP {status}")


async def run_once(api: Api, flow_id: str, **body: Any) -> Run:
    t_create = time.time()
    execution_id = (await api.create(flow_id, **body))["id"]
    t_created = time.time()
    async with subscribe(api, execution_id) as stream:
        t_opened = time.time()
        await start(api, execution_id)
        t_started = time.time()
        await stream.until_terminal()
    return Run(execution_id, t_create, t_created, t_opened, t_started, stream.seen)


async def warm_up(api: Api, flow_id: str, runs: int) -> None:
    for _ in range(runs):
        run = await run_once(api, flow_id)
        if run.terminal.type != "execution.completed":
            raise RuntimeError(f"warm-up run ended {run.terminal.type}: {run.terminal.event}")
