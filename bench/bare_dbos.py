"""The DBOS track's library alone: a plain DBOS 3.4 workflow of three steps on a DBOS queue, no
twintrack around it.

`python -m bench.bare_dbos worker ...` launches DBOS (its own executor id, a pinned application
version) and serves the queue with the worker and global concurrency and the polling interval
twintrack's DBOS track uses. `python -m bench.bare_dbos client ...` enqueues through
`DBOSClient` (as twintrack's API does): `--phase latency` one workflow at a time, waiting for its
result (enqueue → last step done, from the workflow's own timestamp); `--phase throughput`
`--clients` threads enqueueing back to back for `--seconds` (never more than `--in-flight` ahead
of the completed ones), then the workflows completed inside the window are counted in
`dbos.workflow_status`. Each prints one JSON line (see `bench.bare`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
from dbos import DBOS, DBOSClient, EnqueueOptions

from bench.bare_args import bare_parser

APP = "bench-bare"
VERSION = "bench-bare-1"
QUEUE = "bare"
WORKFLOW = "bare_three_steps"
RESULT_POLL_S = 0.005
#: how often the throughput client re-counts the workflows done (for its in-flight cap)
WATCH_S = 0.02
WARM_S = 90.0


@DBOS.step(name="bare_const")
async def _const() -> int:
    return 1


@DBOS.step(name="bare_math")
async def _math(value: int) -> int:
    return value + 1


@DBOS.step(name="bare_output")
async def _output(value: int) -> float:
    return time.time()


@DBOS.workflow(name=WORKFLOW)
async def bare_three_steps(t0: float) -> dict[str, Any]:
    """const → math → output, as the bench's 3-node flow; returns when its last step ran."""
    done = await _output(await _math(await _const()))
    return {"t0": t0, "done": done}


def worker(args: argparse.Namespace) -> None:
    DBOS(
        config={
            "name": APP,
            "system_database_url": args.url,
            "executor_id": args.name,
            "application_version": VERSION,
            "log_level": "WARNING",
        }
    )
    DBOS.listen_queues([QUEUE])
    DBOS.launch()
    DBOS.register_queue(
        QUEUE,
        worker_concurrency=args.concurrency,
        global_concurrency=args.global_concurrency,
        polling_interval_sec=args.poll,
        on_conflict="always_update",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    while not stop.wait(0.5):  # a timed wait: the handler runs between the waits
        pass
    DBOS.destroy(workflow_completion_timeout_sec=0)


_OPTIONS: EnqueueOptions = {"workflow_name": WORKFLOW, "queue_name": QUEUE, "app_version": VERSION}


def _one(client: DBOSClient) -> float:
    t0 = time.time()
    result: dict[str, Any] = client.enqueue(_OPTIONS, t0).get_result(
        polling_interval_sec=RESULT_POLL_S
    )
    return (float(result["done"]) - t0) * 1000


async def _fetch(url: str, query: str, *args: Any) -> list[Any]:
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


def _warm(client: DBOSClient, args: argparse.Namespace) -> None:
    """Until every worker has run a workflow (each executor is polling the queue)."""
    wanted = set(args.workers.split(","))
    deadline = time.monotonic() + WARM_S
    runs = 0
    while time.monotonic() < deadline:
        _one(client)
        runs += 1
        rows = asyncio.run(
            _fetch(
                args.url,
                "SELECT DISTINCT executor_id FROM dbos.workflow_status WHERE name = $1",
                WORKFLOW,
            )
        )
        if {r["executor_id"] for r in rows} >= wanted and runs >= args.warmup:
            return
    raise TimeoutError(f"executors {sorted(wanted)} not all serving within {WARM_S:g}s")


class _Done:
    """The number of this run's workflows that succeeded, re-counted every `WATCH_S` in a thread
    of its own (the throughput client's in-flight cap reads it)."""

    def __init__(self, url: str, since_ms: int) -> None:
        self.count = 0
        self._url, self._since_ms = url, since_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._watch()), daemon=True)

    async def _watch(self) -> None:
        connection = await asyncpg.connect(self._url)
        try:
            while not self._stop.is_set():
                self.count = int(
                    await connection.fetchval(
                        "SELECT count(*) FROM dbos.workflow_status WHERE name = $1 "
                        "AND status = 'SUCCESS' AND created_at >= $2",
                        WORKFLOW,
                        self._since_ms,
                    )
                )
                await asyncio.sleep(WATCH_S)
        finally:
            await connection.close()

    def __enter__(self) -> _Done:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _throughput(client: DBOSClient, args: argparse.Namespace) -> dict[str, Any]:
    """`--clients` threads enqueueing, never more than `--in-flight` ahead of the done ones."""
    sent = [0] * args.clients
    errors: list[str] = []
    deadline = time.monotonic() + args.seconds
    began, cpu0 = time.time(), time.process_time()

    def one(i: int, done: _Done) -> None:
        while time.monotonic() < deadline:
            if sum(sent) - done.count >= args.in_flight:
                time.sleep(0.002)
                continue
            try:
                client.enqueue(_OPTIONS, time.time())
                sent[i] += 1
            except Exception as exc:  # a failed enqueue is a result to report, not a crash
                errors.append(f"{type(exc).__name__}: {exc}")

    with _Done(args.url, int(began * 1000)) as done:
        threads = [threading.Thread(target=one, args=(i, done)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    ended, cpu = time.time(), time.process_time() - cpu0
    time.sleep(1.0)  # workflows completed just before the window closed are committed by now
    rows = asyncio.run(
        _fetch(
            args.url,
            "SELECT count(*) FILTER (WHERE completed_at BETWEEN $2 AND $3) AS in_window, "
            "count(*) FILTER (WHERE status = 'SUCCESS') AS done "
            "FROM dbos.workflow_status WHERE name = $1 AND created_at >= $2",
            WORKFLOW,
            int(began * 1000),
            int(ended * 1000),
        )
    )
    return {
        "began": began,
        "ended": ended,
        "sent": sum(sent),
        "errors": len(errors),
        "first_errors": errors[:3],
        "done_in_window": int(rows[0]["in_window"]),
        "backlog": sum(sent) - int(rows[0]["done"]),
        "cpu_window_s": cpu,
        "cpu_s": time.process_time(),
    }


def client(args: argparse.Namespace) -> dict[str, Any]:
    dbos_client = DBOSClient(
        system_database_url=args.url,
        application_name=APP,
        use_listen_notify=True,
        system_database_pool_size=max(args.clients, 5),
    )
    try:
        if args.phase == "latency":
            _warm(dbos_client, args)
            cpu0 = time.process_time()
            samples = [_one(dbos_client) for _ in range(args.runs)]
            return {"latency_ms": samples, "cpu_window_s": time.process_time() - cpu0}
        return _throughput(dbos_client, args)
    finally:
        dbos_client.destroy()


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bare_parser("python -m bench.bare_dbos")
    parser.add_argument("--global-concurrency", type=int, default=None)
    parser.add_argument("--poll", type=float, default=0.05)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _arguments(argv)
    if args.role == "worker":
        worker(args)
    else:
        print(json.dumps(client(args)), flush=True)


if __name__ == "__main__":
    main()
