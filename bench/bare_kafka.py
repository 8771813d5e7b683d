"""The Kafka track's library alone: a plain aiokafka produce → consume → commit loop with one
PostgreSQL claim row per message, no twintrack around it.

`python -m bench.bare_kafka worker ...` is one consumer of a group (as a `twintrack worker` is):
it takes up to `--concurrency` messages a fetch, for each one claims a row (INSERT, one
transaction) and marks it done (UPDATE, a second), then commits the batch's offsets. `python -m
bench.bare_kafka client ...` is the producer (acks=all): `--phase latency` sends one message at
a time and waits for its row to be done (send → done, from the worker's timestamp); `--phase
throughput` runs `--clients` producers back to back for `--seconds`, never more than
`--in-flight` messages ahead of the rows done, and counts the rows done inside the window. Each
prints one JSON line (see `bench.bare`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.bare_args import bare_parser

TABLE = "bare_claims"
POLL_S = 0.005
#: how often the throughput client re-counts the rows done (for its in-flight cap)
WATCH_S = 0.02
WARM_S = 90.0


async def prepare(database_url: str, bootstrap: str, topic: str, partitions: int) -> None:
    """The claims table and the topic (as twintrack's: `partitions` partitions)."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id text PRIMARY KEY, tag text NOT NULL, "
            "worker text NOT NULL, sent_at double precision NOT NULL, "
            "claimed_at double precision NOT NULL, done_at double precision)"
        )
    finally:
        await connection.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
        for _ in range(100):
            if topic in set(await admin.list_topics()):
                return
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


async def _handle(pool: asyncpg.Pool, value: bytes, worker: str) -> None:
    item = json.loads(value)
    async with pool.acquire() as connection:
        await connection.execute(
            f"INSERT INTO {TABLE} (id, tag, worker, sent_at, claimed_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET worker = $3, "
            "claimed_at = $5",
            item["id"],
            item["tag"],
            worker,
            item["t0"],
            time.time(),
        )
        await connection.execute(
            f"UPDATE {TABLE} SET done_at = $2 WHERE id = $1", item["id"], time.time()
        )


async def worker(args: argparse.Namespace) -> None:
    pool = await asyncpg.create_pool(args.url, min_size=1, max_size=args.concurrency)
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=f"{args.topic}.workers",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
    )
    await consumer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=args.concurrency)
            values = [m.value for messages in batches.values() for m in messages]
            if values:
                await asyncio.gather(*(_handle(pool, v, args.name) for v in values))
                await consumer.commit()
    finally:
        await consumer.stop()
        await pool.close()


def _message(tag: str) -> tuple[str, bytes]:
    key = uuid.uuid4().hex
    return key, json.dumps({"id": key, "tag": tag, "t0": time.time()}).encode()


async def _done_at(connection: asyncpg.Connection, key: str) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = await connection.fetchval(f"SELECT done_at FROM {TABLE} WHERE id = $1", key)
        if done is not None:
            return float(done)
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"message {key} not done within 30 s")


async def _one(producer: AIOKafkaProducer, connection: asyncpg.Connection, topic: str) -> float:
    """Send one message and wait for its row: ms from before the send to the worker's done."""
    key, value = _message("latency")
    t0 = json.loads(value)["t0"]
    await producer.send_and_wait(topic, value, key=key.encode())
    return (await _done_at(connection, key) - float(t0)) * 1000


async def _warm(
    producer: AIOKafkaProducer, connection: asyncpg.Connection, args: argparse.Namespace
) -> None:
    """Until every worker of the group has done a message (each has its partitions)."""
    wanted = set(args.workers.split(","))
    deadline = time.monotonic() + WARM_S
    runs = 0
    while time.monotonic() < deadline:
        await _one(producer, connection, args.topic)
        runs += 1
        seen = {r["worker"] for r in await connection.fetch(f"SELECT DISTINCT worker FROM {TABLE}")}
        if seen >= wanted and runs >= args.warmup:
            return
    raise TimeoutError(f"workers {sorted(wanted)} not all serving within {WARM_S:g}s")


async def client(args: argparse.Namespace) -> dict[str, Any]:
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        acks="all",
        enable_idempotence=args.idempotence,
        linger_ms=0,
    )
    await producer.start()
    connection = await asyncpg.connect(args.url)
    try:
        if args.phase == "latency":
            await _warm(producer, connection, args)
            cpu0 = time.process_time()
            samples = [await _one(producer, connection, args.topic) for _ in range(args.runs)]
            return {"latency_ms": samples, "cpu_window_s": time.process_time() - cpu0}
        return await _throughput(producer, connection, args)
    finally:
        await connection.close()
        await producer.stop()


_DONE = f"SELECT count(*) FROM {TABLE} WHERE tag = 'throughput' AND done_at IS NOT NULL"


async def _throughput(
    producer: AIOKafkaProducer, connection: asyncpg.Connection, args: argparse.Namespace
) -> dict[str, Any]:
    """`--clients` senders, never more than `--in-flight` messages sent and not yet done."""
    sent = issued = done = 0
    errors: list[str] = []
    deadline = time.monotonic() + args.seconds

    async def watch() -> None:
        nonlocal done
        while True:
            done = int(await connection.fetchval(_DONE))
            await asyncio.sleep(WATCH_S)

    async def one() -> None:
        nonlocal sent, issued
        while time.monotonic() < deadline:
            if issued - done >= args.in_flight:
                await asyncio.sleep(0.002)
                continue
            issued += 1
            key, value = _message("throughput")
            try:
                await producer.send_and_wait(args.topic, value, key=key.encode())
                sent += 1
            except Exception as exc:  # a failed send is a result to report, not a crash
                errors.append(f"{type(exc).__name__}: {exc}")

    began, cpu0 = time.time(), time.process_time()
    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(one() for _ in range(args.clients)))
    ended, cpu = time.time(), time.process_time() - cpu0
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await asyncio.sleep(1.0)  # rows done just before the window closed are committed by now
    in_window = await connection.fetchval(
        f"SELECT count(*) FROM {TABLE} WHERE tag = 'throughput' AND done_at BETWEEN $1 AND $2",
        began,
        ended,
    )
    done = await connection.fetchval(_DONE)
    return {
        "began": began,
        "ended": ended,
        "sent": sent,
        "errors": len(errors),
        "first_errors": errors[:3],
        "done_in_window": int(in_window),
        "backlog": sent - int(done),
        "cpu_window_s": cpu,
        "cpu_s": time.process_time(),
    }


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bare_parser("python -m bench.bare_kafka")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--idempotence", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _arguments(argv)
    if args.role == "worker":
        asyncio.run(worker(args))
    else:
        print(json.dumps(asyncio.run(client(args))), flush=True)


if __name__ == "__main__":
    main()
