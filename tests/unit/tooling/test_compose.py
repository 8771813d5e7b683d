"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine needed).

The app services (migrate, api, worker) must only be given variables that are twintrack
settings, with values `load_settings` accepts once Compose has substituted `${VAR:-default}`,
so a typo, a removed setting or a bad default fails here rather than at deploy time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from twintrack.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

APP_SERVICES = {"migrate": ["migrate"], "api": ["api"], "worker": ["worker"]}
SETTING_NAMES = {name.upper() for name in Settings.model_fields}

# ${VAR}, ${VAR:-default} (unset or empty) and ${VAR-default} (unset only), as Compose reads them.
_INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
)


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), "docker-compose.yml is not a mapping"
    return loaded


def _service(name: str) -> dict[str, Any]:
    service = _compose()["services"][name]
    assert isinstance(service, dict)
    return service


def _environment(service: Mapping[str, Any]) -> dict[str, str | None]:
    """A service's environment as a dict; a bare `NAME` (no value) reads as None."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        pairs = [item.split("=", 1) if "=" in item else [item, None] for item in raw]
        return {key: value for key, value in pairs}
    assert isinstance(raw, dict)
    return {key: None if value is None else str(value) for key, value in raw.items()}


def _interpolate(value: str, host: Mapping[str, str]) -> str:
    """`value` as Compose would pass it, given the environment of the shell that runs it."""

    def substitute(match: re.Match[str]) -> str:
        name, op, default = match["name"], match["op"], match["default"] or ""
        if op == ":-":
            return host.get(name) or default
        if op == "-":
            return host.get(name, default)
        return host.get(name, "")

    unresolved = _INTERPOLATION.sub(substitute, value.replace("$$", "\0"))
    assert "$" not in unresolved, f"unsupported interpolation in {value!r}"
    return unresolved.replace("\0", "$")


def _container_env(service: Mapping[str, Any], host: Mapping[str, str]) -> dict[str, str]:
    """What the container gets: values interpolated; a valueless name is passed through from
    the shell when set there and left out otherwise (Compose's rule)."""
    env: dict[str, str] = {}
    for name, value in _environment(service).items():
        if value is None:
            if name in host:
                env[name] = host[name]
        else:
            env[name] = _interpolate(value, host)
    return env


def _settings_from(env: Mapping[str, str]) -> Settings:
    return load_settings(**{name.lower(): value for name, value in env.items()})


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only the compose values count: no stray `.env` and no setting from this shell."""
    monkeypatch.chdir(tmp_path)
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)


def test_compose_parses_with_the_services_of_a_deployment() -> None:
    compose = _compose()
    assert "version" not in compose, "the Compose spec has no `version:` key"
    assert {"postgres", "kafka", "migrate", "api", "worker"} <= set(compose["services"])


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_services_are_given_only_twintrack_settings(name: str) -> None:
    env = _environment(_service(name))
    assert env, f"{name} gets no environment"
    unknown = sorted(set(env) - SETTING_NAMES)
    assert not unknown, f"{name}: not twintrack settings (typo or removed?): {unknown}"


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_services_get_the_shared_settings(name: str) -> None:
    shared = _environment({"environment": _compose()["x-twintrack-env"]})
    assert shared.items() <= _environment(_service(name)).items()


@pytest.mark.parametrize(("name", "command"), sorted(APP_SERVICES.items()))
def test_app_services_run_their_twintrack_subcommand(name: str, command: list[str]) -> None:
    service = _service(name)
    assert "build" in service, f"{name} must run the image built from the Dockerfile"
    assert "entrypoint" not in service, "the Dockerfile's ENTRYPOINT (twintrack) must stay"
    assert service["command"] == command


def test_the_default_environment_is_valid_settings() -> None:
    settings = _settings_from(_container_env(_service("api"), host={}))
    assert settings.database_url == "postgresql://twintrack:twintrack@postgres:5432/twintrack"
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert settings.kafka_enable_idempotence is True
    assert settings.api_host == "0.0.0.0"
    assert settings.api_port == 8000
    assert settings.log_format == "json"
    assert settings.enable_dbos_execution is False
    assert settings.dbos_rollout_percent is None
    assert settings.execution_events_backend.value == "kafka"


def test_operators_can_flip_the_rollout_switches_from_the_shell() -> None:
    host = {
        "ENABLE_DBOS_EXECUTION": "true",
        "DBOS_ROLLOUT_PERCENT": "25",
        "EXECUTION_EVENTS_BACKEND": "dbos",
        "WORKER_CONCURRENCY": "8",
    }
    env = _container_env(_service("worker"), host)
    settings = _settings_from(env)
    assert settings.enable_dbos_execution is True
    assert settings.dbos_rollout_percent == 25
    assert settings.execution_events_backend.value == "dbos"
    assert settings.worker_concurrency == 8


def test_an_unset_rollout_percent_is_left_out_not_empty() -> None:
    # The operator's value passes through; when it is unset, the service sees it unset (the
    # flag then decides), not a 0% cohort that would silently override ENABLE_DBOS_EXECUTION.
    env = _container_env(_service("api"), host={})
    assert "DBOS_ROLLOUT_PERCENT" in _environment(_service("api"))
    assert "DBOS_ROLLOUT_PERCENT" not in env


def test_the_api_waits_for_migrations_and_the_broker() -> None:
    depends = _service("api")["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["kafka"]["condition"] == "service_healthy"
    assert _service("migrate")["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert _service("migrate")["restart"] == "no"
    assert "/readyz" in " ".join(_service("api")["healthcheck"]["test"])


def test_workers_can_be_scaled() -> None:
    worker = _service("worker")
    assert "container_name" not in worker
    assert "ports" not in worker, "a fixed host port would stop `--scale worker=N`"
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    grace = str(worker["stop_grace_period"])
    match = re.fullmatch(r"(\d+)s", grace)
    assert match is not None, f"stop_grace_period {grace!r}: write it in seconds"
    assert int(match[1]) >= 20, "running executions need time to finish on SIGTERM"


def test_servers_have_healthchecks_for_the_services_that_wait_on_them() -> None:
    assert "pg_isready" in " ".join(_service("postgres")["healthcheck"]["test"])
    kafka = _service("kafka")
    assert "kafka-" in " ".join(kafka["healthcheck"]["test"])
    kafka_env = _environment(kafka)
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka_env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments out."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation"
    return [
        (keyword.upper(), args.strip())
        for keyword, _, args in (line.partition(" ") for line in lines)
    ]


def test_the_image_runs_twintrack() -> None:
    instructions = _instructions()
    assert instructions[0][0] == "FROM"
    entrypoints = [args for keyword, args in instructions if keyword == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT"
    assert "twintrack" in entrypoints[-1]
    assert any(keyword == "USER" and args not in {"root", "0"} for keyword, args in instructions)


def test_the_image_has_the_migrations() -> None:
    copied = " ".join(args for keyword, args in _instructions() if keyword in {"COPY", "ADD"})
    assert re.search(r"(^|\s)(\./)?alembic/?(\s|$)", copied), "alembic/ is not copied"
    assert re.search(r"(^|\s)(\./)?alembic\.ini(\s|$)", copied), "alembic.ini is not copied"


def test_the_build_context_keeps_what_the_image_needs() -> None:
    ignored = {
        line.strip().strip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    needed = {"pyproject.toml", "uv.lock", "README.md", "alembic", "alembic.ini", "src"}
    assert not needed & ignored, (
        f".dockerignore drops what the Dockerfile copies: {needed & ignored}"
    )
