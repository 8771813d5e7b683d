"""Per-process CPU time and memory from /proc (Linux), to say where the time goes.

Processes are grouped by a root pid and all its descendants (PostgreSQL's backends are children
of the postmaster), and the servers are found by the port they listen on, so other processes
on the machine (another test run, say) are counted as "other", not as ours.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    comm: str
    cpu_s: float


def _stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, tail = raw.rpartition(")")
    comm = head.split("(", 1)[1]
    fields = tail.split()
    # fields[0] is the state (field 3); ppid is field 4, utime 14, stime 15.
    return ProcStat(pid, int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / _TICKS)


def snapshot() -> dict[int, ProcStat]:
    stats: dict[int, ProcStat] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            stats[stat.pid] = stat
    return stats


def machine_busy_s() -> tuple[float, float]:
    """(busy CPU seconds, total CPU seconds) of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])
    idle = values[3] + values[4]
    return (total - idle) / _TICKS, total / _TICKS


def descendants(roots: Iterable[int], stats: Mapping[int, ProcStat]) -> set[int]:
    members = {pid for pid in roots if pid in stats}
    grew = True
    while grew:
        grew = False
        for stat in stats.values():
            if stat.pid not in members and stat.ppid in members:
                members.add(stat.pid)
                grew = True
    return members


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on TCP `port` (IPv4 or IPv6), if it is ours to see."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    return int(entry)
            except OSError:
                continue
    return None


def rss_mib(pid: int) -> float:
    """VmRSS of `pid` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no VmRSS for pid {pid}")


class CpuMeter:
    """CPU used per group (and by everything else) between `start()` and `stop()`."""

    def __init__(self, groups: Mapping[str, Iterable[int]]) -> None:
        self._roots = {name: list(pids) for name, pids in groups.items()}
        self._before: dict[int, ProcStat] = {}
        self._machine_before = (0.0, 0.0)

    def start(self) -> None:
        self._before = snapshot()
        self._machine_before = machine_busy_s()

    def stop(self, wall_s: float) -> dict[str, float]:
        """Cores used on average per group over `wall_s`, plus "other" and "machine idle"."""
        after = snapshot()
        busy, total = machine_busy_s()
        used: dict[str, float] = {}
        counted: set[int] = set()
        for name, roots in self._roots.items():
            members = descendants(roots, after) - counted
            counted |= members
            seconds = sum(
                after[pid].cpu_s - (self._before[pid].cpu_s if pid in self._before else 0.0)
                for pid in members
            )
            used[name] = seconds / wall_s
        busy_s = busy - self._machine_before[0]
        total_s = total - self._machine_before[1]
        cores = os.cpu_count() or 1
        used["other processes"] = max(busy_s / wall_s - sum(used.values()), 0.0)
        used["idle"] = max((total_s - busy_s) / wall_s, 0.0) if total_s else 0.0
        used["machine busy"] = min(busy_s / wall_s, float(cores))
        return used
