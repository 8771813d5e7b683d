"""The test servers are real, usable, found the way discovery promises, and really go away."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.fixtures.servers import UniqueName
from twintrack.tooling.embedded._proc import pid_alive, process_group_members, wait_until
from twintrack.tooling.embedded.broker import EmbeddedBroker
from twintrack.tooling.embedded.capabilities import KAFKA_CAPABILITIES, TANSU_CAPABILITIES
from twintrack.tooling.embedded.discovery import (
    InfraUnavailable,
    ProvidedBroker,
    ProvidedPostgres,
    provide_broker,
    provide_postgres,
)
from twintrack.tooling.embedded.postgres import (
    EmbeddedPostgres,
    EmbeddedServerError,
    url_with_database,
    url_with_driver,
)

pytestmark = pytest.mark.integration


# -- PostgreSQL ----------------------------------------------------------------------------------


async def test_asyncpg_connects_and_queries(pg_server: ProvidedPostgres) -> None:
    assert pg_server.url.startswith("postgresql://")
    conn = await asyncpg.connect(pg_server.url)
    try:
        assert await conn.fetchval("SELECT 40 + 2") == 42
        assert await conn.fetchval("SELECT current_database()") == "postgres"
    finally:
        await conn.close()


async def test_sqlalchemy_asyncpg_accepts_the_url(pg_server: ProvidedPostgres) -> None:
    engine = create_async_engine(url_with_driver(pg_server.url, "asyncpg"))
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await engine.dispose()


async def test_create_database_gives_an_isolated_database(
    pg_server: ProvidedPostgres, unique_name: UniqueName
) -> None:
    name = unique_name("iso")
    admin = await asyncpg.connect(pg_server.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(url_with_database(pg_server.url, name))
        try:
            assert await conn.fetchval("SELECT current_database()") == name
            await conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            await conn.execute("INSERT INTO t VALUES (1)")
            assert await conn.fetchval("SELECT count(*) FROM t") == 1
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# -- Kafka-protocol broker -----------------------------------------------------------------------


async def test_keyed_message_round_trip_with_acks_all(
    kafka_broker: ProvidedBroker, unique_name: UniqueName
) -> None:
    servers, caps = kafka_broker.bootstrap_servers, kafka_broker.capabilities
    topic, group = unique_name("topic"), unique_name("group")
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(
        bootstrap_servers=servers, acks="all", enable_idempotence=caps.idempotence
    )
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b"payload", key=b"key-1", headers=[("h", b"1")])
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=servers,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=25,
        session_timeout_ms=3000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(20):
            msg = await consumer.getone()
        assert (msg.key, msg.value, msg.headers) == (b"key-1", b"payload", (("h", b"1"),))
        assert (msg.partition, msg.offset) == (sent.partition, sent.offset)
        await consumer.commit()
        assert await consumer.committed(TopicPartition(topic, sent.partition)) == sent.offset + 1
    finally:
        await consumer.stop()


# -- discovery -----------------------------------------------------------------------------------


def _must_not_start(self: object) -> str:
    raise AssertionError("discovery started a server although the env named one")


def test_discovery_prefers_database_url_from_env(
    pg_server: ProvidedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_INFRA", raising=False)
    monkeypatch.setenv("DATABASE_URL", url_with_driver(pg_server.url, "asyncpg"))
    monkeypatch.setattr(EmbeddedPostgres, "start", _must_not_start)
    with provide_postgres() as provided:
        assert provided.source == "env"
        assert provided.url == url_with_driver(pg_server.url, None)


def test_discovery_prefers_bootstrap_servers_from_env(
    kafka_broker: ProvidedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_INFRA", raising=False)
    monkeypatch.delenv("KAFKA_CAPABILITIES", raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_broker.bootstrap_servers)
    monkeypatch.setattr(EmbeddedBroker, "start", _must_not_start)
    with provide_broker() as provided:
        assert (provided.source, provided.bootstrap_servers) == (
            "env",
            kafka_broker.bootstrap_servers,
        )
        assert provided.capabilities == TANSU_CAPABILITIES  # assume less unless told
    monkeypatch.setenv("KAFKA_CAPABILITIES", "kafka")
    with provide_broker() as provided:
        assert provided.capabilities == KAFKA_CAPABILITIES


def test_forced_env_mode_without_url_fails_loudly() -> None:
    with (
        pytest.raises(InfraUnavailable, match="DATABASE_URL"),
        provide_postgres(env={"TEST_INFRA": "env"}),
    ):
        pass
    with (
        pytest.raises(InfraUnavailable, match="TEST_INFRA"),
        provide_broker(env={"TEST_INFRA": "nope"}),
    ):
        pass


# -- embedded servers: stopping really ends them; leftovers get reaped ---------------------------


async def test_stopping_embedded_postgres_ends_all_its_processes() -> None:
    server = EmbeddedPostgres()
    url = server.start()
    pid, pgdata = server.pid, server.data_dir
    assert pid is not None
    assert pgdata is not None
    conn = await asyncpg.connect(url)  # an open client must not hold up shutdown
    backend = await conn.fetchval("SELECT pg_backend_pid()")
    try:
        server.stop()
    finally:
        conn.terminate()
    assert not pid_alive(pid)
    assert not pid_alive(backend)
    assert process_group_members(pid) == []
    assert not pgdata.parent.exists(), "throw-away cluster directory is deleted"
    server.stop()  # idempotent


def test_stopping_embedded_broker_ends_its_process() -> None:
    broker = EmbeddedBroker()
    host, port = broker.start().split(":")
    pid = broker.pid
    assert pid is not None
    with socket.create_connection((host, int(port)), timeout=2):  # an open client connection
        broker.stop()
    assert not pid_alive(pid)
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection((host, int(port)), timeout=2),
    ):
        pass


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A scratch dir the unprivileged PostgreSQL account can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="twintrack-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_persistent_cluster_keeps_data_across_restarts(reachable_dir: Path) -> None:
    data_dir = reachable_dir / "nested" / "pgdata"
    with EmbeddedPostgres(data_dir) as first:
        conn = await asyncpg.connect(first.url)
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hello')")
        await conn.close()
    with EmbeddedPostgres(data_dir) as second:
        conn = await asyncpg.connect(second.url)
        assert await conn.fetchval("SELECT v FROM kept") == "hello"
        await conn.close()
    assert data_dir.joinpath("PG_VERSION").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root has to drop to another account")
def test_unreachable_data_dir_is_a_clear_error(reachable_dir: Path) -> None:
    private = reachable_dir / "private"
    private.mkdir(mode=0o700)
    server = EmbeddedPostgres(private / "pgdata")
    with pytest.raises(EmbeddedServerError, match="cannot traverse"):
        server.start()
    assert server.pid is None


_OWNER_SCRIPT = """
import sys
from twintrack.tooling.embedded.{module} import {cls}
server = {cls}()
server.start()
print(server.pid, flush=True)
sys.stdin.read()  # block until killed
"""


@pytest.mark.parametrize(
    ("module", "cls"), [("broker", "EmbeddedBroker"), ("postgres", "EmbeddedPostgres")]
)
def test_orphan_of_a_killed_owner_is_reaped_by_the_next_start(module: str, cls: str) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER_SCRIPT.format(module=module, cls=cls)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert owner.stdout is not None
        orphan = int(owner.stdout.readline())
    finally:
        owner.kill()  # SIGKILL: no atexit, no cleanup
        owner.wait()
    assert pid_alive(orphan), "the server outlives its hard-killed owner"

    server: EmbeddedBroker | EmbeddedPostgres = (
        EmbeddedBroker() if module == "broker" else EmbeddedPostgres()
    )
    try:
        with server:
            assert wait_until(lambda: not pid_alive(orphan), timeout=5)
    finally:
        if pid_alive(orphan):  # keep the machine clean even when the assertion fails
            os.killpg(orphan, signal.SIGKILL)
