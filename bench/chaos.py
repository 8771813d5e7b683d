"""Fault injection for the chaos soak, against servers and processes the soak itself owns.

The soak never restarts or stalls a server someone else uses: `soak_servers()` starts an embedded
PostgreSQL on a cluster directory of its own (kept across a restart, same port) and an embedded
Tansu broker. The faults:

- `restart_postgres`: a fast shutdown of the postmaster (clients are disconnected), `down_s`
  with no database, then the same cluster started again on the same port;
- `stall_broker`: SIGSTOP on the Tansu process for `stall_s`, then SIGCONT (a partition: open
  connections stay up but nothing answers);
- `kill_worker`: SIGKILL to a `twintrack worker` process group, reaped at once.

The blocking parts (stopping/starting PostgreSQL, reaping a worker) run in a thread of the
soak's own: the API under test shares the soak's event loop and must keep serving while its
database goes away, and it may fill the loop's default executor with calls that block for the
whole outage (DBOS retries its system-database connection with a backoff of a minute and more),
which would leave the restart queued behind them and PostgreSQL down for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.infra import Servers
from twintrack.tooling.embedded._proc import EmbeddedServerError, free_port
from twintrack.tooling.embedded.broker import EmbeddedBroker
from twintrack.tooling.embedded.discovery import ProvidedBroker, ProvidedPostgres
from twintrack.tooling.embedded.postgres import EmbeddedPostgres

_PREFIX = "twintrack-soak-"
START_TRIES = 5
#: the faults' own threads (see the module docstring)
_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="soak-chaos")


async def _blocking(call: Callable[[], object]) -> None:
    await asyncio.get_running_loop().run_in_executor(_THREADS, call)


@dataclass
class SoakServers:
    """The soak's own PostgreSQL and broker, as `Servers` for `bench.infra.deploy`."""

    postgres: EmbeddedPostgres
    broker: EmbeddedBroker

    @property
    def servers(self) -> Servers:
        pg, broker = self.postgres, self.broker
        return Servers(
            ProvidedPostgres(pg.url, "embedded", pg.description),
            ProvidedBroker(
                broker.bootstrap_servers, "embedded", broker.capabilities, broker.description
            ),
        )


@contextlib.contextmanager
def soak_servers() -> Iterator[SoakServers]:
    """Servers to break: a PostgreSQL cluster in a directory of ours (not deleted by a stop, so a
    restart finds its data) on a fixed port, and a broker. Both stopped and deleted afterwards."""
    base = Path(tempfile.mkdtemp(prefix=_PREFIX))
    base.chmod(0o755)  # as root, PostgreSQL runs as another account that must reach the cluster
    try:
        postgres = EmbeddedPostgres(base / "pg", port=free_port(), durable=False)
        with postgres, EmbeddedBroker() as broker:
            yield SoakServers(postgres, broker)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class Outage:
    """time.time() values of one server fault."""

    began: float  # the fault was injected (stop requested / SIGSTOP sent)
    down: float  # the server stopped answering (postmaster exited / SIGSTOP sent)
    ended: float  # the server answers again (postmaster ready / SIGCONT sent)


async def restart_postgres(postgres: EmbeddedPostgres, down_s: float) -> Outage:
    """Stop the server (fast shutdown), leave it down `down_s`, start it on the same port."""
    began = time.time()
    await _blocking(postgres.stop)
    down = time.time()
    try:
        await asyncio.sleep(down_s)  # the length of the outage: the fault itself
    finally:
        await _start_again(postgres)
    return Outage(began, down, time.time())


async def _start_again(postgres: EmbeddedPostgres) -> None:
    """Start on the same port, a few tries: while it was down, a client reconnecting to that
    port can have been given it as its own local port (a TCP self-connect), briefly."""
    for attempt in range(START_TRIES):
        try:
            await _blocking(postgres.start)
            return
        except EmbeddedServerError:
            if attempt == START_TRIES - 1:
                raise
        await asyncio.sleep(1.0)  # before trying the port again


async def stall_broker(broker: EmbeddedBroker, stall_s: float) -> Outage:
    """Freeze the broker process for `stall_s` seconds; always thawed, even when cancelled."""
    pid = broker.pid
    if pid is None or not broker.is_running():
        raise RuntimeError("the soak's broker is not running: nothing to stall")
    began = time.time()
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(stall_s)  # the length of the partition: the fault itself
    finally:
        os.kill(pid, signal.SIGCONT)
    return Outage(began, began, time.time())


async def kill_worker(proc: subprocess.Popen[bytes]) -> float:
    """SIGKILL a worker process (it leads its own process group) and reap it; the kill's time."""
    killed = time.time()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await _blocking(lambda: proc.wait(10))
    return killed
