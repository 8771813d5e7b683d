"""Where PostgreSQL and the Kafka-protocol broker come from, for tests and `twintrack dev` alike.

Each server is decided on its own, in this order:

1. **env**: `DATABASE_URL` / `KAFKA_BOOTSTRAP_SERVERS` is set, so use it as given and start nothing.
   A broker from the env is assumed to be Tansu-like (`TANSU_CAPABILITIES`) unless
   `KAFKA_CAPABILITIES=kafka` says it is Apache Kafka: assuming less only skips idempotence,
   transactions and exact end offsets, while assuming more would fail on Tansu.
2. **docker**: a Docker engine answers a ping, so start testcontainers (real Kafka capabilities).
3. **embedded**: the wheel-shipped servers in `postgres` and `broker`.

`TEST_INFRA=env|docker|embedded` (or the `mode` argument) forces one source for both servers and
fails loudly when it is not available, instead of silently falling back.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args
from urllib.parse import urlsplit, urlunsplit

from twintrack.tooling.embedded.broker import EmbeddedBroker
from twintrack.tooling.embedded.capabilities import (
    KAFKA_CAPABILITIES,
    TANSU_CAPABILITIES,
    BrokerCapabilities,
    capabilities_named,
)
from twintrack.tooling.embedded.postgres import EmbeddedPostgres

__all__ = [
    "BROKER_URL_ENV",
    "DATABASE_URL_ENV",
    "MODE_ENV",
    "InfraUnavailable",
    "ProvidedBroker",
    "ProvidedPostgres",
    "Source",
    "docker_available",
    "normalize_postgres_url",
    "plan_broker",
    "plan_postgres",
    "provide_broker",
    "provide_postgres",
]

Source = Literal["env", "docker", "embedded"]

MODE_ENV = "TEST_INFRA"
DATABASE_URL_ENV = "DATABASE_URL"
BROKER_URL_ENV = "KAFKA_BOOTSTRAP_SERVERS"
CAPABILITIES_ENV = "KAFKA_CAPABILITIES"
POSTGRES_IMAGE_ENV = "TEST_POSTGRES_IMAGE"
KAFKA_IMAGE_ENV = "TEST_KAFKA_IMAGE"
DEFAULT_POSTGRES_IMAGE = "postgres:18-alpine"
DEFAULT_KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"


class InfraUnavailable(RuntimeError):
    """The requested (or forced) server source cannot be used."""


@dataclass(frozen=True)
class ProvidedPostgres:
    """A running PostgreSQL; `url` is `postgresql://...` (no driver suffix), maintenance DB."""

    url: str
    source: Source
    description: str


@dataclass(frozen=True)
class ProvidedBroker:
    """A running Kafka-protocol broker and what it can do."""

    bootstrap_servers: str
    source: Source
    capabilities: BrokerCapabilities
    description: str


def normalize_postgres_url(url: str) -> str:
    """`postgres://` or `postgresql+driver://` to plain `postgresql://`, which asyncpg accepts."""
    parts = urlsplit(url)
    if parts.scheme.split("+")[0] not in ("postgres", "postgresql"):
        raise InfraUnavailable(f"not a PostgreSQL URL: {url!r}")
    return urlunsplit(parts._replace(scheme="postgresql"))


@functools.cache
def docker_available() -> bool:
    """Whether a Docker engine answers; ~1 ms when there is none. Cached per process."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=2)
    except DockerException:
        return False
    try:
        return bool(client.ping())
    except (DockerException, OSError):
        return False
    finally:
        client.close()


def _forced_mode(mode: Source | None, env: Mapping[str, str]) -> Source | None:
    raw = mode if mode is not None else env.get(MODE_ENV, "").strip().lower()
    if not raw:
        return None
    if raw not in get_args(Source):
        raise InfraUnavailable(f"{MODE_ENV}={raw!r}; expected one of {get_args(Source)}")
    return cast(Source, raw)


def _plan(env_var: str, mode: Source | None, env: Mapping[str, str] | None) -> Source:
    env = os.environ if env is None else env
    forced = _forced_mode(mode, env)
    if forced == "env" and not env.get(env_var):
        raise InfraUnavailable(f"{MODE_ENV}=env but ${env_var} is not set")
    if forced == "docker" and not docker_available():
        raise InfraUnavailable(f"{MODE_ENV}=docker but no Docker engine answers")
    if forced is not None:
        return forced
    if env.get(env_var):
        return "env"
    return "docker" if docker_available() else "embedded"


def plan_postgres(mode: Source | None = None, env: Mapping[str, str] | None = None) -> Source:
    """Where PostgreSQL would come from, without starting anything (for report headers)."""
    return _plan(DATABASE_URL_ENV, mode, env)


def plan_broker(mode: Source | None = None, env: Mapping[str, str] | None = None) -> Source:
    """Where the broker would come from, without starting anything (for report headers)."""
    return _plan(BROKER_URL_ENV, mode, env)


def _testcontainers_module(name: str) -> Any:
    """testcontainers' `community.<name>` module, else the deprecated top-level one (older)."""
    try:
        return importlib.import_module(f"testcontainers.community.{name}")
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module(f"testcontainers.{name}")


@contextlib.contextmanager
def provide_postgres(
    *,
    mode: Source | None = None,
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[ProvidedPostgres]:
    """A running PostgreSQL for the duration of the block; whatever was started is stopped after.

    `data_dir` only affects the embedded server: None is a throw-away cluster, a path persists.
    """
    env = os.environ if env is None else env
    source = plan_postgres(mode, env)
    if source == "env":
        url = normalize_postgres_url(env[DATABASE_URL_ENV])
        yield ProvidedPostgres(url, "env", f"${DATABASE_URL_ENV} ({_redact(url)})")
    elif source == "docker":
        image = env.get(POSTGRES_IMAGE_ENV, DEFAULT_POSTGRES_IMAGE)
        module = _testcontainers_module("postgres")
        with module.PostgresContainer(image, driver=None) as container:
            url = normalize_postgres_url(container.get_connection_url())
            yield ProvidedPostgres(url, "docker", f"testcontainers {image}")
    else:
        with EmbeddedPostgres(data_dir) as server:
            yield ProvidedPostgres(server.url, "embedded", server.description)


@contextlib.contextmanager
def provide_broker(
    *, mode: Source | None = None, env: Mapping[str, str] | None = None
) -> Iterator[ProvidedBroker]:
    """A running Kafka-protocol broker for the block; stopped afterwards if we started it."""
    env = os.environ if env is None else env
    source = plan_broker(mode, env)
    if source == "env":
        servers = env[BROKER_URL_ENV]
        caps = capabilities_named(env.get(CAPABILITIES_ENV) or "tansu")
        kind = "Kafka" if caps == KAFKA_CAPABILITIES else "Tansu-like"
        yield ProvidedBroker(servers, "env", caps, f"${BROKER_URL_ENV} ({servers}, {kind})")
    elif source == "docker":
        image = env.get(KAFKA_IMAGE_ENV, DEFAULT_KAFKA_IMAGE)
        module = _testcontainers_module("kafka")
        # Match the embedded broker where tests care: 4 partitions on auto-create, and short
        # session timeouts allowed (Kafka's default floor is 6 s; Tansu has none).
        container = (
            module.KafkaContainer(image)
            .with_env("KAFKA_NUM_PARTITIONS", "4")
            .with_env("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "500")
            .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        )
        with container:
            servers = container.get_bootstrap_server()
            yield ProvidedBroker(servers, "docker", KAFKA_CAPABILITIES, f"testcontainers {image}")
    else:
        with EmbeddedBroker() as broker:
            yield ProvidedBroker(
                broker.bootstrap_servers, "embedded", TANSU_CAPABILITIES, broker.description
            )


def _redact(url: str) -> str:
    """`url` without its password, for headers and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
