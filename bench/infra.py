"""Servers, fresh databases and deployments: what every measurement runs on.

The servers come from `twintrack.tooling.embedded.discovery`, exactly as for the tests and
`twintrack dev`:
`DATABASE_URL` / `KAFKA_BOOTSTRAP_SERVERS` when set, else embedded PostgreSQL and Tansu. A
deployment is the e2e tests' stack (`tests.e2e.stack.open_stack`: the API on real HTTP in this
process) on a database created and migrated for it, with topics of its own, plus `twintrack
worker` processes: the *split* shape. The *dev* shape (`deploy_dev`) is one `twintrack dev`
process (API and worker in one process, as users try it) on a database of its own, driven over
HTTP from this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.e2e.stack import Api, Stack, open_stack

from bench.config import DEPLOYMENT_ENV, DEV, SPLIT, WORKER_PROCESSES, Mode
from bench.drive import run_once
from bench.flows import three_nodes
from bench.procs import listening_pid
from twintrack.adapters.postgres.db import create_engine, with_database
from twintrack.adapters.postgres.tables import ExecutionClaimRow, WorkerRow
from twintrack.bootstrap import migrate
from twintrack.tooling.embedded._proc import free_port
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


async def admin(server_url: str, statement: str) -> None:
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def create_database(server_url: str, name: str) -> str:
    """A new database on the server, migrated to head; returns its URL."""
    await admin(server_url, f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    await migrate(url)
    return url


async def drop_database(server_url: str, name: str) -> None:
    await admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class Remote:
    """A deployment whose API runs in another process (the dev shape): how to reach it."""

    api: Api
    base_url: str
    engine: AsyncEngine
    log_dir: Path


@dataclass
class Deployment:
    """A running deployment: `stack` (API in this process, key, container) and its worker
    processes (split shape), or a `remote` API whose one process also works (dev shape; then
    `workers` holds that process)."""

    stack: Stack | None
    mode: Mode
    env: dict[str, str]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    shape: str = SPLIT
    remote: Remote | None = None
    _spawned: int = 0
    _probe_flow: str | None = None

    @property
    def api(self) -> Api:
        return self.remote.api if self.remote else self._stack.api

    @property
    def base_url(self) -> str:
        return self.remote.base_url if self.remote else self._stack.base_url

    @property
    def _stack(self) -> Stack:
        assert self.stack is not None, "a dev-shape deployment has no in-process stack"
        return self.stack

    def spawn_worker(self) -> subprocess.Popen[bytes]:
        """Start one more `twintrack worker` process (the deployment stops it at the end)."""
        self._spawned += 1
        proc = self._stack.spawn_worker_process(f"worker-{self._spawned}")
        self.workers.append(proc)
        return proc

    async def query(self, statement: Any) -> list[Any]:
        if self.remote is not None:
            async with self.remote.engine.connect() as connection:
                return list((await connection.execute(statement)).all())
        async with self._stack.container.sessions() as session:
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

    @property
    def log_dir(self) -> Path | None:
        """Where the deployment's processes write their logs (one file each)."""
        return self.remote.log_dir if self.remote else self._stack.log_dir

    def log_tail(self, lines: int = 20) -> str:
        log_dir = self.log_dir
        assert log_dir is not None
        tails = []
        for log in sorted(log_dir.glob("*.log")):
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


#: how long a `twintrack dev` process may take to migrate, make its key and listen
DEV_READY_S = 90.0


async def _dev_key(proc: subprocess.Popen[bytes], env_file: Path, base_url: str) -> str:
    """The API key `twintrack dev` wrote to its env file, once its API answers."""
    deadline = time.monotonic() + DEV_READY_S
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"twintrack dev exited {proc.returncode}")
            entries = _env_file(env_file)
            if "TWINTRACK_API_KEY" in entries:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/healthz")).status_code == 200:
                        return entries["TWINTRACK_API_KEY"]
            await asyncio.sleep(0.1)
    raise TimeoutError(f"twintrack dev not serving within {DEV_READY_S:g}s")


def _env_file(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.asynccontextmanager
async def deploy_dev(
    servers: Servers, mode: Mode, log_dir: Path, overrides: Mapping[str, str] | None = None
) -> AsyncIterator[Deployment]:
    """A fresh dev-shape deployment of `mode`: one `twintrack dev` process (API + worker, on
    this run's servers through DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS), serving when it yields.

    It runs in a directory of its own, where it writes `.twintrack/dev.env` (its key)."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    database_url = await create_database(servers.postgres.url, name)
    env = deployment_env(servers, database_url, name, mode, overrides or {})
    logs = log_dir / name
    logs.mkdir(parents=True)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    engine = create_engine(database_url, pool_size=2, max_overflow=2)
    with (logs / "dev.log").open("wb") as log:
        proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once; Stack spawns workers alike)
            [sys.executable, "-m", "twintrack", "dev", "--port", str(port)],
            env={**os.environ, **env, "API_HOST": "127.0.0.1"},
            cwd=logs,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        key = await _dev_key(proc, logs / ".twintrack" / "dev.env", base_url)
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            remote = Remote(Api(client, key), base_url, engine, logs)
            deployment = Deployment(None, mode, env, [proc], shape=DEV, remote=remote)
            await deployment.wait_registered([proc])
            await deployment.wait_serving([proc])
            yield deployment
    finally:
        await asyncio.to_thread(_stop, proc)
        await engine.dispose()
        await drop_database(servers.postgres.url, name)


def _port(address: str) -> int | None:
    try:
        return urlsplit(f"//{address.split(',')[0]}").port
    except ValueError:
        return None


#: CPU roles (`cpu_groups` keys) of the servers, and of this process in each shape
POSTGRES, BROKER, LOADGEN = "PostgreSQL", "broker", "load generator"
API_ROLE, DEV_ROLE, BENCH_ROLE = "API", "dev process (API + worker)", "bench process"


def worker_role(index: int) -> str:
    return f"worker {index}"


def server_groups(database_url: str, bootstrap_servers: str) -> dict[str, list[int]]:
    """The servers' pids by role, found by their listening port (none when they run elsewhere)."""
    groups: dict[str, list[int]] = {}
    for name, address in (
        (POSTGRES, urlsplit(database_url).netloc.rsplit("@", 1)[-1]),
        (BROKER, bootstrap_servers),
    ):
        port = _port(address)
        pid = listening_pid(port) if port else None
        if pid is not None:
            groups[name] = [pid]
    return groups


def cpu_groups(deployment: Deployment) -> dict[str, list[int]]:
    """Root pids of the deployment's processes, by role, for `procs.CpuMeter`: each worker on its
    own (split shape) or the one dev process, then the servers, then this process (the API in
    the split shape; only the measuring client in the dev shape). This process comes last, as the
    servers and workers are its children.
    """
    if deployment.shape == DEV:
        groups = {DEV_ROLE: [p.pid for p in deployment.workers]}
    else:
        groups = {worker_role(i): [p.pid] for i, p in enumerate(deployment.workers, 1)}
    groups.update(
        server_groups(deployment.env["DATABASE_URL"], deployment.env["KAFKA_BOOTSTRAP_SERVERS"])
    )
    groups[BENCH_ROLE if deployment.shape == DEV else API_ROLE] = [os.getpid()]
    return groups
