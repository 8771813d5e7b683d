"""Servers, fresh databases and deployments: what every measurement runs on.

The servers come from `twintrack.tooling.embedded.discovery`, exactly as for the tests and
`twintrack dev`:
`DATABASE_URL` / `KAFKA_BOOTSTRAP_SERVERS` when set, else embedded PostgreSQL and Tansu. A
deployment is the e2e tests' stack (`tests.e2e.stack.open_stack`: the API on real HTTP in this
process) on a database created and migrated for it, with topics of its own, plus `twintrack
worker` processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, text
from tests.e2e.stack import Api, Stack, open_stack

from bench.config import DEPLOYMENT_ENV, WORKER_PROCESSES, Mode
from bench.drive import run_once
from bench.flows import three_nodes
from bench.procs import listening_pid
from twintrack.adapters.postgres.db import create_engine, with_database
from twintrack.adapters.postgres.tables import ExecutionClaimRow, WorkerRow
from twintrack.bootstrap import migrate
from twintrack.tooling.embedded.discovery import ProvidedBroker, ProvidedPostgres
from twintrack.tooling.embedded.discovery import provide_broker as _provide_broker
from twintrack.tooling.embedded.discovery import provide_postgres as _provide_postgres


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Servers:
    postgres: ProvidedPostgres
    broker: ProvidedBroker

    def describe(self) -> list[tuple[str, str]]:
        return [("PostgreSQL", self.postgres.description), ("broker", self.broker.description)]


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    with _provide_postgres() as postgres, _provide_broker() as broker:
        yield Servers(postgres, broker)


async def _admin(server_url: str, statement: str) -> None:
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def create_database(server_url: str, name: str) -> str:
    """A new database on the server, migrated to head; returns its URL."""
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    await migrate(url)
    return url


async def drop_database(server_url: str, name: str) -> None:
    await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Deployment:
    """A running deployment: `stack` (API, key, container) and its worker processes."""

    stack: Stack
    mode: Mode
    env: dict[str, str]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _spawned: int = 0
    _probe_flow: str | None = None

    @property
    def api(self) -> Api:
        return self.stack.api

    def spawn_worker(self) -> subprocess.Popen[bytes]:
        """Start one more `twintrack worker` process (the deployment stops it at the end)."""
        self._spawned += 1
        proc = self.stack.spawn_worker_process(f"worker-{self._spawned}")
        self.workers.append(proc)
        return proc

    async def query(self, statement: Any) -> list[Any]:
        async with self.stack.container.sessions() as session:
            return list((await session.execute(statement)).all())

    async def wait_registered(
        self, procs: list[subprocess.Popen[bytes]], timeout: float = 60
    ) -> None:
        """Until each process has registered in the workers table (its consumer is starting)."""
        pids = {p.pid for p in procs}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {proc.pid} exited: {self.log_tail()}")
            rows = await self.query(
                select(WorkerRow.pid).where(WorkerRow.pid.in_(pids), WorkerRow.stopped_at.is_(None))
            )
            if {row.pid for row in rows} >= pids:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"workers {sorted(pids)} did not register within {timeout:g}s")

    async def wait_serving(self, procs: list[subprocess.Popen[bytes]], timeout: float = 90) -> None:
        """Until each process has run an execution: a worker registers before its consumer has
        joined the group, and starts its recovery sweeper only after that, so a deployment is
        not ready until then. Runs 3-node executions until each of `procs` has started one."""
        pids = {p.pid for p in procs}
        rows = await self.query(
            select(WorkerRow.worker_id).where(
                WorkerRow.pid.in_(pids), WorkerRow.stopped_at.is_(None)
            )
        )
        waiting = {row.worker_id for row in rows}
        if self._probe_flow is None:
            self._probe_flow = await self.api.create_flow(three_nodes())
        async with asyncio.timeout(timeout):
            while waiting:
                run = await run_once(self.api, self._probe_flow)
                self._check_mode(run.at("execution.created").event["data"])
                waiting.discard(run.at("execution.started").event["data"].get("worker_id"))

    def _check_mode(self, created: dict[str, Any]) -> None:
        landed = (created.get("track"), created.get("events_backend"))
        if landed != (self.mode.track, self.mode.events_backend):
            raise RuntimeError(
                f"mode {self.mode.name!r} expects track={self.mode.track}, "
                f"events_backend={self.mode.events_backend}; executions landed on {landed}"
            )

    async def claim_holder_pid(self, execution_id: str) -> int | None:
        """The pid of the worker process holding the execution's claim."""
        rows = await self.query(
            select(WorkerRow.pid)
            .join(ExecutionClaimRow, ExecutionClaimRow.worker_id == WorkerRow.worker_id)
            .where(ExecutionClaimRow.execution_id == execution_id)
        )
        return int(rows[0].pid) if rows else None

    def log_tail(self, lines: int = 20) -> str:
        assert self.stack.log_dir is not None
        tails = []
        for log in sorted(self.stack.log_dir.glob("*.log")):
            content = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {log.name}\n" + "\n".join(content))
        return "\n".join(tails)


def deployment_env(
    servers: Servers, database_url: str, prefix: str, mode: Mode, overrides: Mapping[str, str]
) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": servers.broker.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": prefix,
        "KAFKA_ENABLE_IDEMPOTENCE": str(servers.broker.capabilities.idempotence).lower(),
        **DEPLOYMENT_ENV,
        **mode.env,
        **overrides,
    }


@contextlib.asynccontextmanager
async def deploy(
    servers: Servers,
    mode: Mode,
    log_dir: Path,
    overrides: Mapping[str, str] | None = None,
    *,
    workers: int = WORKER_PROCESSES,
) -> AsyncIterator[Deployment]:
    """A fresh deployment of `mode` with `workers` worker processes, all serving when it yields."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    database_url = await create_database(servers.postgres.url, name)
    env = deployment_env(servers, database_url, name, mode, overrides or {})
    logs = log_dir / name
    logs.mkdir(parents=True)
    try:
        async with open_stack(env, logs) as stack:
            deployment = Deployment(stack, mode, env)
            procs = [deployment.spawn_worker() for _ in range(workers)]
            await deployment.wait_registered(procs)
            await deployment.wait_serving(procs)
            yield deployment
    finally:
        await drop_database(servers.postgres.url, name)


def _port(address: str) -> int | None:
    try:
        return urlsplit(f"//{address.split(',')[0]}").port
    except ValueError:
        return None


def cpu_groups(deployment: Deployment) -> dict[str, list[int]]:
    """Root pids of the deployment's processes, by role, for `procs.CpuMeter`.

    The servers are found by their listening port (nothing when they run elsewhere); the bench
    process (the API) comes last, as the servers and workers are its children.
    """
    groups: dict[str, list[int]] = {"worker processes": [p.pid for p in deployment.workers]}
    for name, address in (
        ("PostgreSQL", urlsplit(deployment.env["DATABASE_URL"]).netloc.rsplit("@", 1)[-1]),
        ("broker (Tansu)", deployment.env["KAFKA_BOOTSTRAP_SERVERS"]),
    ):
        port = _port(address)
        pid = listening_pid(port) if port else None
        if pid is not None:
            groups[name] = [pid]
    groups["API (bench process)"] = [os.getpid()]
    return groups
