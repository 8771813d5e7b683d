"""CPU milliseconds per finished execution, per process: table rows every column shares.

The throughput measurements (twintrack's, in both shapes, and the bare baselines') meter the CPU
of each process group over their load window (`procs.CpuMeter`, in cores) and divide it by the
executions finished in that window. Rows are keyed by shape and role, so the baselines' workers,
PostgreSQL, broker and load generator sit on the same lines as twintrack's and get ratios.
"""

from __future__ import annotations

from collections.abc import Mapping

from bench.report import Row
from bench.stats import fmt

#: what 200 executions/s on 2 cores allows, every process of the run included
GOAL_TOTAL_MS = 10.0
#: CpuMeter entries that are not one of the run's processes
NOT_A_PROCESS = frozenset({"idle", "machine busy", "other processes"})


def per_execution_ms(
    cores: Mapping[str, float], wall_s: float, done: int, skip: frozenset[str] = frozenset()
) -> dict[str, float]:
    """CPU ms per finished execution of each process role (not the meter's other entries)."""
    return {
        role: value * wall_s * 1000 / max(done, 1)
        for role, value in cores.items()
        if role not in NOT_A_PROCESS and role not in skip
    }


#: row order: the API side, workers, servers, then the load generator
_ORDER = ("API", "dev process", "client", "worker", "PostgreSQL", "broker", "load generator")


def _rank(role: str) -> int:
    return next((i for i, p in enumerate(_ORDER) if role.startswith(p)), len(_ORDER))


def rows(shape: str, ms: Mapping[str, float]) -> list[Row]:
    """One row per role (API side, workers, servers, load generator), then their total."""
    out = [
        Row(
            f"cpu-{shape}-{role}",
            f"CPU per execution under throughput load ({shape} shape): {role}",
            "-",
            f"{fmt(value)} ms",
            None,
            (value,),
        )
        for role, value in sorted(ms.items(), key=lambda item: _rank(item[0]))
    ]
    total = sum(ms.values())
    out.append(
        Row(
            f"cpu-{shape}-total",
            f"CPU per execution under throughput load ({shape} shape): all the processes above",
            f"≤ {GOAL_TOTAL_MS:g} ms",
            f"{fmt(total)} ms",
            total <= GOAL_TOTAL_MS,
            (total,),
        )
    )
    return out


def cores_line(cores: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in cores.items())
