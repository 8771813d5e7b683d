"""The physical bound: one-row commits per second of the run's own PostgreSQL.

Every execution costs a handful of PostgreSQL transactions, so the rate at which this server
commits one-row INSERTs (`pgbench -n -f` with a one-statement script, autocommit: one row, one
commit) at 4 and at 16 clients is the ceiling any track can approach on this machine. pgbench
comes from the embedded server's binaries (or PATH); without it, a small asyncpg loop of the same
statement does the same job. The server's `fsync` / `synchronous_commit` are reported beside it
(the embedded throw-away server runs with both off).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from bench.config import Sizes
from bench.infra import Servers, admin, drop_database, progress
from bench.report import Row, Section
from bench.stats import fmt
from twintrack.adapters.postgres.db import with_database

TABLE = "bound_commits"
STATEMENT = f"INSERT INTO {TABLE} (v) VALUES (1);"
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)


def libpq_url(url: str) -> str:
    """`url` as libpq and asyncpg take it: no `+driver` suffix in the scheme."""
    parsed = make_url(url)
    return parsed.set(drivername=parsed.get_backend_name()).render_as_string(hide_password=False)


def pgbench_path() -> Path | None:
    """pgbench of the embedded server's binaries, else the one on PATH, else None."""
    with contextlib.suppress(Exception):
        from twintrack.tooling.embedded.postgres import postgres_bin_dir

        candidate = postgres_bin_dir() / "pgbench"
        if candidate.exists():
            return candidate
    found = shutil.which("pgbench")
    return Path(found) if found else None


def parse_tps(output: str) -> float:
    match = _TPS.search(output)
    if match is None:
        raise RuntimeError(f"no tps in pgbench output: {output[-500:]}")
    return float(match.group(1))


async def _pgbench(binary: Path, url: str, clients: int, seconds: float) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write(STATEMENT + "\n")
        script.flush()
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            "-n",  # no vacuum of pgbench's own tables (there are none)
            f"--client={clients}",
            f"--jobs={min(clients, 2)}",
            f"--time={max(int(seconds), 1)}",
            f"--file={script.name}",
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench exited {proc.returncode}: {out.decode()[-500:]}")
    return parse_tps(out.decode())


async def _loop(url: str, clients: int, seconds: float) -> float:
    """The fallback: `clients` connections, each committing one-row INSERTs back to back."""
    connections = [await asyncpg.connect(url) for _ in range(clients)]
    count = 0
    deadline = time.monotonic() + seconds

    async def one(connection: asyncpg.Connection) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            await connection.execute(STATEMENT)
            count += 1

    began = time.monotonic()
    try:
        await asyncio.gather(*(one(c) for c in connections))
    finally:
        for connection in connections:
            await connection.close()
    return count / (time.monotonic() - began)


async def measure(found: Servers, sizes: Sizes) -> Section:
    name = f"bench_bound_{uuid.uuid4().hex[:8]}"
    await admin(found.postgres.url, f'CREATE DATABASE "{name}"')
    url = libpq_url(with_database(found.postgres.url, name))
    binary = pgbench_path()
    where = "the embedded server's" if binary and "pgserver" in str(binary) else "on PATH"
    tool = f"pgbench ({where})" if binary else "an asyncpg loop (no pgbench found)"
    section = Section("physical bound")
    try:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, v int)")
            fsync = await connection.fetchval("SHOW fsync")
            sync_commit = await connection.fetchval("SHOW synchronous_commit")
        finally:
            await connection.close()
        for clients in sizes.bound_clients:
            progress(f"bound: one-row commits, {clients} clients, {sizes.bound_s:g}s ({tool})")
            if binary:
                rate = await _pgbench(binary, url, clients, sizes.bound_s)
            else:
                rate = await _loop(url, clients, sizes.bound_s)
            progress(f"bound: {rate:.0f} commits/s at {clients} clients")
            section.rows.append(
                Row(
                    f"bound-{clients}",
                    f"physical bound: one-row INSERT commits/s, {clients} clients",
                    "-",
                    f"{fmt(rate)} /s",
                    None,
                    (rate,),
                )
            )
    finally:
        await drop_database(found.postgres.url, name)
    section.details = [
        f"Measured with {tool}, {sizes.bound_s:g} s per client count, one `{STATEMENT}` per "
        f"transaction, on the run's PostgreSQL (fsync={fsync}, synchronous_commit={sync_commit})."
    ]
    return section
