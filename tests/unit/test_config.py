"""Settings: every documented default, and bad values or combinations named at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from twintrack.config import ConfigError, load_settings
from twintrack.domain.execution import EventsBackend, Track


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in (
        "DATABASE_URL",
        "KAFKA_BOOTSTRAP_SERVERS",
        "ENABLE_DBOS_EXECUTION",
        "DBOS_ROLLOUT_PERCENT",
        "EXECUTION_EVENTS_BACKEND",
        "WORKER_TRACKS",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults_match_the_design() -> None:
    s = load_settings()
    assert s.enable_dbos_execution is False
    assert s.dbos_rollout_percent is None
    assert s.execution_events_backend is EventsBackend.KAFKA
    assert s.start_signal_timeout_s == 300
    assert s.execution_max_depth == 100
    assert s.worker_concurrency == 5
    assert s.claim_ttl_s == 6
    assert s.recovery_sweep_interval_s == 1
    assert s.max_attempts == 3
    assert s.dbos_queue_concurrency is None  # no global limit: per worker, as on Kafka
    assert s.dbos_worker_concurrency == 5
    assert s.worker_tracks == [Track.KAFKA, Track.DBOS]


def test_environment_and_dotenv_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("CLAIM_TTL_S=30\nWORKER_TRACKS=dbos\n")
    monkeypatch.setenv("MAX_ATTEMPTS", "7")
    s = load_settings()
    assert (s.claim_ttl_s, s.max_attempts, s.worker_tracks) == (30, 7, [Track.DBOS])


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DBOS_ROLLOUT_PERCENT": "101"}, "DBOS_ROLLOUT_PERCENT"),
        ({"EXECUTION_EVENTS_BACKEND": "redis"}, "EXECUTION_EVENTS_BACKEND"),
        ({"ENABLE_DBOS_EXECUTION": "perhaps"}, "ENABLE_DBOS_EXECUTION"),
        ({"CLAIM_TTL_S": "0"}, "CLAIM_TTL_S"),
        ({"WORKER_TRACKS": "kafka,rabbit"}, "WORKER_TRACKS"),
        ({"WORKER_TRACKS": ","}, "WORKER_TRACKS"),
        ({"KAFKA_TOPIC_PREFIX": "bad prefix!"}, "KAFKA_TOPIC_PREFIX"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=named):
        load_settings()


def test_dbos_events_without_any_dbos_execution_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXECUTION_EVENTS_BACKEND", "dbos")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "EXECUTION_EVENTS_BACKEND=dbos" in message
    assert "ENABLE_DBOS_EXECUTION" in message
    monkeypatch.setenv("DBOS_ROLLOUT_PERCENT", "0")
    with pytest.raises(ConfigError):
        load_settings()


@pytest.mark.parametrize(
    "env",
    [{"ENABLE_DBOS_EXECUTION": "true"}, {"DBOS_ROLLOUT_PERCENT": "25"}],
)
def test_dbos_events_with_dbos_executions_is_accepted(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    monkeypatch.setenv("EXECUTION_EVENTS_BACKEND", "dbos")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings().execution_events_backend is EventsBackend.DBOS


def test_rollout_percent_overrides_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENABLE_DBOS_EXECUTION", "true")
    monkeypatch.setenv("DBOS_ROLLOUT_PERCENT", "0")
    assert load_settings().dbos_can_receive is False


def test_worker_concurrency_above_queue_concurrency_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DBOS_QUEUE_CONCURRENCY", "4")
    with pytest.raises(ConfigError, match="DBOS_WORKER_CONCURRENCY=5 exceeds"):
        load_settings()


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAIM_TTL_S", "-1")
    monkeypatch.setenv("MAX_ATTEMPTS", "0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "CLAIM_TTL_S" in str(info.value)
    assert "MAX_ATTEMPTS" in str(info.value)


def test_an_empty_optional_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBOS_ROLLOUT_PERCENT", "")
    monkeypatch.setenv("DATABASE_URL", " ")
    s = load_settings()
    assert s.dbos_rollout_percent is None
    assert s.database_url is None


def test_secrets_are_read_from_the_environment_and_never_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONSOLE_SECRET", "console-signing-secret")
    monkeypatch.setenv("DBOS_CONDUCTOR_KEY", "conductor-key")
    monkeypatch.setenv("DBOS_ADMIN_ENABLED", "true")
    s = load_settings()
    assert s.console_secret is not None
    assert s.console_secret.get_secret_value() == "console-signing-secret"
    assert s.dbos_conductor_key is not None
    assert s.dbos_conductor_key.get_secret_value() == "conductor-key"
    assert s.dbos_admin_enabled is True
    assert "console-signing-secret" not in repr(s)
    assert "conductor-key" not in repr(s)
    monkeypatch.setenv("CONSOLE_SECRET", "")
    assert load_settings().console_secret is None
