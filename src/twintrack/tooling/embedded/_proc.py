"""Process plumbing shared by the embedded servers: free ports, liveness, shutdown, orphan reaping.

Linux-only on purpose (Tansu ships as a Linux binary; liveness reads /proc). Every server runs in
its own session (`start_new_session=True`) so a Ctrl-C aimed at pytest does not kill it before
teardown, which also means nothing kills it when its owner dies hard; hence the state file next to
each temporary server and `reap_orphans`, which stops servers whose owning process is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

STATE_FILE = "twintrack-state.json"

#: (signal, seconds to wait for exit) tried in order; a SIGKILL to the whole process group follows.
StopPlan = Sequence[tuple[signal.Signals, float]]


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or stopped; the message carries its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago; callers retry on EADDRINUSE (another process may win)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    """True if `pid` runs; zombies count as dead because PID 1 in containers may never reap them."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] not in ("Z", "X")


def process_cmdline(pid: int) -> str:
    """The command line of `pid` with NULs as spaces, or "" when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def process_group_members(pgid: int) -> list[int]:
    """Live pids whose process group is `pgid` (a server's children share its group)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; returns whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def log_tail(path: Path | None, lines: int = 40) -> str:
    """The last `lines` lines of a log file, for error messages."""
    if path is None:
        return "<no log>"
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<log unreadable: {exc}>"
    return "\n".join(text.splitlines()[-lines:]) or "<log empty>"


def terminate(pid: int, plan: StopPlan, popen: subprocess.Popen[bytes] | None = None) -> None:
    """Stop a server that leads its own process group, escalating through `plan`, then SIGKILL.

    The final killpg happens while the leader is still alive (not yet reaped by us), so its pid, and
    therefore the group id, cannot have been reused by an unrelated process.
    """

    def exited(grace: float) -> bool:
        if popen is not None:
            try:
                popen.wait(grace)
            except subprocess.TimeoutExpired:
                return False
            return True
        return wait_until(lambda: not pid_alive(pid), grace, 0.01)

    for sig, grace in plan:
        if popen is not None and popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if exited(grace):
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if not exited(5.0):
        raise EmbeddedServerError(f"process {pid} survived SIGKILL")


@dataclass(frozen=True)
class ServerState:
    """Who owns a server; `marker` must occur in the server's cmdline (guards against pid reuse)."""

    owner_pid: int
    server_pid: int
    marker: str


def write_state(directory: Path, state: ServerState) -> None:
    """Record ownership of the server living in `directory`."""
    tmp = directory / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(state)))
    tmp.replace(directory / STATE_FILE)


def read_state(directory: Path) -> ServerState | None:
    """The ownership record in `directory`, or None if missing or unreadable."""
    try:
        data = json.loads((directory / STATE_FILE).read_text())
        return ServerState(int(data["owner_pid"]), int(data["server_pid"]), str(data["marker"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def owned_server_pid(state: ServerState) -> int | None:
    """The recorded server pid if that process still runs and is really the recorded server."""
    pid = state.server_pid
    if pid_alive(pid) and state.marker in process_cmdline(pid):
        return pid
    return None


def reap_orphans(roots: Iterable[Path], prefix: str, plan: StopPlan) -> list[Path]:
    """Stop servers in `root/prefix*` dirs whose owner died without cleaning up; delete the dirs.

    Only directories carrying a state file are touched, and only if the recorded owner is gone, so
    servers of concurrent live sessions (other pytest runs, xdist workers) are left alone.
    """
    reaped = []
    for root in dict.fromkeys(roots):
        for directory in root.glob(prefix + "*"):
            state = read_state(directory)
            if state is None or pid_alive(state.owner_pid):
                continue
            pid = owned_server_pid(state)
            if pid is not None:
                terminate(pid, plan)
            shutil.rmtree(directory, ignore_errors=True)
            reaped.append(directory)
    return reaped


class ManagedServer:
    """A server process we start and own: `with server:` starts it and always stops it,
    also when the block raises. Subclasses set `_proc` and `_port` when they start."""

    _proc: subprocess.Popen[bytes] | None = None
    _port: int | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def port(self) -> int | None:
        return self._port

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def address(self) -> str:
        """How clients reach the running server (a URL, or host:port)."""
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    def start(self) -> str:
        """Start it (idempotent) and return its address; a failed start leaves nothing behind,
        and the process is stopped at interpreter exit whatever happens."""
        if self.is_running():
            return self.address
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self.address

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
