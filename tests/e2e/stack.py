"""A whole twintrack deployment for end-to-end tests: real Postgres, real broker, the real API
over HTTP, and workers (in-process, or separate `twintrack worker` processes to kill)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from twintrack.bootstrap import Container, ServiceFactory
from twintrack.config import Settings, load_settings
from twintrack.entrypoints.processes import WorkerProcess, api_server
from twintrack.tooling.embedded._proc import free_port


async def holder(stack: Stack, execution_id: str) -> tuple[str, int] | None:
    """(worker_id, pid) of the worker process holding the execution's claim now."""
    from sqlalchemy import select

    from twintrack.adapters.postgres.tables import ExecutionClaimRow, WorkerRow

    async with stack.container.sessions() as session:
        row = (
            await session.execute(
                select(WorkerRow.worker_id, WorkerRow.pid)
                .join(ExecutionClaimRow, ExecutionClaimRow.worker_id == WorkerRow.worker_id)
                .where(ExecutionClaimRow.execution_id == execution_id)
            )
        ).first()
    return (row.worker_id, row.pid) if row else None


TERMINAL = {"execution.completed", "execution.failed", "execution.stopped"}
FINISHED = {"completed", "failed", "stopped"}


async def eventually(
    probe: Callable[[], Awaitable[Any]], *, timeout: float = 15.0, every: float = 0.05
) -> Any:
    """Poll `probe` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


def parse_sse(lines: list[str]) -> list[dict[str, Any]]:
    """SSE lines to messages {id, event, data}; comments and keep-alives are dropped."""
    messages: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "data" in current:
                messages.append(current)
            current = {}
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            current[name] = json.loads(value) if name == "data" else value
    if "data" in current:
        messages.append(current)
    return messages


@dataclass
class Api:
    """A thin client for the HTTP API, as an application team would write it."""

    client: httpx.AsyncClient
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def create_flow(self, flow: dict[str, Any]) -> str:
        r = await self.client.post("/v1/flows", json=flow, headers=self.auth)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def create(self, flow_id: str, **body: Any) -> dict[str, Any]:
        r = await self.client.post(
            "/v1/executions", json={"flow_id": flow_id, **body}, headers=self.auth
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def command(self, execution_id: str, command: str, reason: str | None = None) -> int:
        body = {"reason": reason} if reason else None
        r = await self.client.post(
            f"/v1/executions/{execution_id}/{command}", json=body, headers=self.auth
        )
        return r.status_code

    async def get(self, execution_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/executions/{execution_id}", headers=self.auth)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def tree(self, execution_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/executions/{execution_id}/tree", headers=self.auth)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def events(
        self, execution_id: str, from_index: int = 0, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """The whole SSE stream from `from_index` until the server ends it (terminal event)."""
        lines: list[str] = []
        url = f"/v1/executions/{execution_id}/events"
        async with (
            asyncio.timeout(timeout),
            self.client.stream(
                "GET", url, params={"from_index": from_index}, headers=self.auth
            ) as response,
        ):
            assert response.status_code == 200, await response.aread()
            async for line in response.aiter_lines():
                lines.append(line)
        return [m["data"] for m in parse_sse(lines)]

    async def wait_event(
        self,
        execution_id: str,
        match: Callable[[dict[str, Any]], bool],
        timeout: float = 15.0,
    ) -> list[dict[str, Any]]:
        """Follow the stream until an event matches; returns the events up to and with it."""
        seen: list[dict[str, Any]] = []
        url = f"/v1/executions/{execution_id}/events"
        async with (
            asyncio.timeout(timeout),
            self.client.stream("GET", url, headers=self.auth) as response,
        ):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    seen.append(json.loads(line[5:]))
                    if match(seen[-1]):
                        return seen
        raise AssertionError(f"stream of {execution_id} ended without a match: {seen}")

    async def node_event(
        self, execution_id: str, type: str, node_id: str, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        return await self.wait_event(
            execution_id,
            lambda e: e["type"] == type and e["data"].get("node_id") == node_id,
            timeout,
        )

    def watch(self, execution_id: str, from_index: int = 0) -> asyncio.Task[list[dict[str, Any]]]:
        return asyncio.create_task(self.events(execution_id, from_index))

    async def wait_status(
        self, execution_id: str, statuses: set[str] | str, timeout: float = 15.0
    ) -> dict[str, Any]:
        wanted = {statuses} if isinstance(statuses, str) else statuses

        async def probe() -> dict[str, Any] | None:
            row = await self.get(execution_id)
            return row if row["status"] in wanted else None

        result: dict[str, Any] = await eventually(probe, timeout=timeout)
        return result


def assert_contiguous(events: list[dict[str, Any]], start: int = 0) -> None:
    """The DESIGN §1.5 guarantee: every index once, in order, no gap, ending at the terminal."""
    assert [e["index"] for e in events] == list(range(start, start + len(events))), [
        (e["index"], e["type"]) for e in events
    ]
    assert events[-1]["type"] in TERMINAL
    assert sum(e["type"] in TERMINAL for e in events) == 1


@dataclass
class Stack:
    settings: Settings
    factory: ServiceFactory
    container: Container
    api: Api
    base_url: str
    env: dict[str, str]
    workers: list[WorkerProcess] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_dir: Path | None = None

    @property
    def settings_track(self) -> str:
        """The track new executions go to under this stack's settings."""
        return "dbos" if self.settings.dbos_can_receive else "kafka"

    async def add_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self.factory, self.container)
        await worker.start()
        self.workers.append(worker)
        return worker

    def spawn_worker_process(
        self, name: str, *, module: str = "twintrack", env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """A real `twintrack worker` process, to be killed (`module`: another entry point
        wrapping the command, as tests/e2e/traced.py does)."""
        assert self.log_dir is not None
        log = (self.log_dir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "worker"],
            env={**os.environ, **self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def spawn_api_process(
        self,
        name: str,
        port: int,
        *,
        module: str = "twintrack",
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """A real `twintrack api` process on `port` (same database and topics), to be killed
        and started again on the same port."""
        assert self.log_dir is not None
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "api"],
            env={
                **os.environ,
                **self.env,
                **(env or {}),
                "API_HOST": "127.0.0.1",
                "API_PORT": str(port),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    async def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for worker in self.workers:
            await worker.stop()


def stack_env(database_url: str, bootstrap: str, prefix: str, idempotence: bool) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
        "KAFKA_ENABLE_IDEMPOTENCE": "true" if idempotence else "false",
        "KAFKA_PARTITIONS": "3",
        "KAFKA_FETCH_MAX_WAIT_MS": "10",
        "KAFKA_SESSION_TIMEOUT_MS": "3000",
        "KAFKA_EVENTS_LINGER_MS": "2",
        "CLAIM_TTL_S": "3",
        "RECOVERY_SWEEP_INTERVAL_S": "0.3",
        "WORKER_CONCURRENCY": "5",
        "LOG_LEVEL": "WARNING",
    }


@contextlib.asynccontextmanager
async def open_stack(env: dict[str, str], log_dir: Path, **overrides: str) -> AsyncIterator[Stack]:
    """Start the API (real HTTP on a free port) on a fresh database and topic prefix."""
    env = {**env, **overrides}
    settings = load_settings(**{k.lower(): v for k, v in env.items()})
    factory = ServiceFactory(settings)
    container = factory.build()
    await container.start()
    port = free_port()
    server = api_server(container, "127.0.0.1", port)
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: _true(server.started), timeout=10)
    key = (await container.keys.create("team-a")).key
    base_url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        stack = Stack(
            settings, factory, container, Api(client, key), base_url, env, log_dir=log_dir
        )
        try:
            yield stack
        finally:
            await stack.close()
            server.should_exit = True
            await serving
            await container.close()


async def _true(value: bool) -> bool:
    return value
