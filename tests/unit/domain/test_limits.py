"""Per-owner limit rules (pure): where each limit bites, what a refusal names, stream slots."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from twintrack.adapters.postgres.pagination import decode_tree_cursor, encode_tree_cursor
from twintrack.config import ConfigError, load_settings
from twintrack.core.errors import InvalidCursor
from twintrack.core.service import aggregate_status
from twintrack.domain.execution import ExecutionStatus
from twintrack.domain.limits import LimitExceeded, OwnerLimits, check_streams
from twintrack.entrypoints.api.errors import to_response
from twintrack.entrypoints.api.limits import StreamSlots

S = ExecutionStatus


def test_a_tree_may_reach_its_cap_but_not_pass_it() -> None:
    limits = OwnerLimits(max_executions_per_tree=10)
    limits.check_tree(10, "ex_root")
    with pytest.raises(LimitExceeded) as refused:
        limits.check_tree(11, "ex_root")
    assert refused.value.setting == "MAX_EXECUTIONS_PER_TREE"
    assert refused.value.limit == 10
    assert str(refused.value) == (
        "tree ex_root is full, no child can be added: MAX_EXECUTIONS_PER_TREE is 10"
    )


def test_an_owner_may_start_until_the_running_limit() -> None:
    limits = OwnerLimits(max_running_executions_per_owner=3)
    limits.check_running(2, "alice")
    with pytest.raises(LimitExceeded) as refused:
        limits.check_running(3, "alice")
    assert refused.value.details == {"limit": "MAX_RUNNING_EXECUTIONS_PER_OWNER", "value": 3}
    assert "MAX_RUNNING_EXECUTIONS_PER_OWNER is 3" in str(refused.value)


def test_a_refusal_is_a_429_envelope_naming_the_setting_and_its_value() -> None:
    with pytest.raises(LimitExceeded) as refused:
        check_streams(2, 2)
    response = to_response(refused.value)
    assert response.status_code == 429
    assert response.body == (
        b'{"error":{"code":"limit_exceeded","message":"this API key already has 2 open streams: '
        b'MAX_SSE_STREAMS_PER_KEY is 2","details":{"limit":"MAX_SSE_STREAMS_PER_KEY","value":2}}}'
    )


def test_stream_slots_count_per_key_and_free_once() -> None:
    slots = StreamSlots(per_key=2)
    first, _second = slots.acquire("key-a"), slots.acquire("key-a")
    with pytest.raises(LimitExceeded):
        slots.acquire("key-a")
    slots.acquire("key-b")  # another key has its own slots
    first.release()
    first.release()  # a second release must not free someone else's slot
    assert slots.open_streams("key-a") == 1
    slots.acquire("key-a")
    with pytest.raises(LimitExceeded):
        slots.acquire("key-a")


def test_tree_status_is_running_while_any_member_is_unfinished_else_the_worst_ending() -> None:
    assert aggregate_status({S.COMPLETED, S.CREATED}) is S.RUNNING
    assert aggregate_status({S.COMPLETED, S.PAUSED, S.FAILED}) is S.RUNNING
    assert aggregate_status({S.COMPLETED, S.STOPPED, S.FAILED}) is S.FAILED
    assert aggregate_status({S.COMPLETED, S.STOPPED}) is S.STOPPED
    assert aggregate_status({S.COMPLETED}) is S.COMPLETED


def test_tree_cursors_round_trip_and_forgeries_are_refused() -> None:
    at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert decode_tree_cursor(encode_tree_cursor(3, at, "ex_1")) == (3, at, "ex_1")
    for forged in ("", "!!!", "WzEsMl0", "WyJ4IiwiMjAyNi0xMi0wMVQxMjowMDowMCIsImV4XzEiXQ"):
        with pytest.raises(InvalidCursor):
            decode_tree_cursor(forged)


def test_limit_settings_have_defaults_and_refuse_zero(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.max_executions_per_tree == 1000
    assert s.max_running_executions_per_owner == 200
    assert s.max_sse_streams_per_key == 100
    monkeypatch.setenv("MAX_RUNNING_EXECUTIONS_PER_OWNER", "7")
    assert load_settings().max_running_executions_per_owner == 7
    monkeypatch.setenv("MAX_SSE_STREAMS_PER_KEY", "0")
    with pytest.raises(ConfigError, match="MAX_SSE_STREAMS_PER_KEY"):
        load_settings()
