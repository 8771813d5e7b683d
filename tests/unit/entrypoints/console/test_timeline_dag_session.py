"""The console's pure parts: the waterfall and node statuses from a stream, the DAG layout,
and the session cookie's signature, expiry and CSRF token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from twintrack.adapters.postgres.keys import Principal, hash_key
from twintrack.domain.events import Event, EventType
from twintrack.entrypoints.console.dag import layout
from twintrack.entrypoints.console.session import NotSignedIn, Sessions
from twintrack.entrypoints.console.timeline import node_statuses, waterfall

T0 = datetime(2026, 1, 1, tzinfo=UTC)
_E = EventType


def stream(*items: tuple[int, EventType, dict[str, Any]]) -> list[Event]:
    return [
        Event(
            execution_id="ex_1", index=i, type=t, timestamp=T0 + timedelta(milliseconds=ms), data=d
        )
        for i, (ms, t, d) in enumerate(items)
    ]


def test_waterfall_has_the_queue_wait_each_node_and_each_retry_as_an_attempt() -> None:
    events = stream(
        (0, _E.EXECUTION_CREATED, {}),
        (10, _E.EXECUTION_QUEUED, {}),
        (30, _E.EXECUTION_STARTED, {}),
        (31, _E.NODE_STARTED, {"node_id": "a"}),
        (41, _E.NODE_COMPLETED, {"node_id": "a"}),
        (42, _E.NODE_STARTED, {"node_id": "b"}),
        (500, _E.EXECUTION_RETRYING, {"attempt": 2}),
        (501, _E.EXECUTION_STARTED, {}),
        (502, _E.NODE_STARTED, {"node_id": "b"}),
        (520, _E.NODE_FAILED, {"node_id": "b"}),
        (521, _E.EXECUTION_FAILED, {}),
    )
    wf = waterfall(events)
    assert [a.number for a in wf.attempts] == [1, 2]
    first, second = wf.attempts
    assert [(b.label, b.start_ms, b.end_ms, b.status) for b in first.bars] == [
        ("queue wait", 0, 20, "completed"),
        ("a", 21, 31, "completed"),
        ("b", 32, 490, "abandoned"),
    ]
    assert [(b.kind, b.label, b.status) for b in second.bars] == [
        ("requeue", "re-queued", "completed"),
        ("node", "b", "failed"),
    ]
    assert wf.ended == "execution.failed"
    assert wf.span_ms == 511
    assert node_statuses(events) == {"a": "completed", "b": "failed"}


def test_running_nodes_of_a_stopped_execution_are_cancelled() -> None:
    events = stream(
        (0, _E.EXECUTION_QUEUED, {}),
        (1, _E.EXECUTION_STARTED, {}),
        (2, _E.NODE_STARTED, {"node_id": "wait"}),
        (9, _E.EXECUTION_STOPPED, {}),
    )
    assert waterfall(events).attempts[0].bars[-1].status == "cancelled"
    assert node_statuses(events) == {"wait": "cancelled"}


def test_dag_layout_puts_each_node_after_its_inputs() -> None:
    definition = {
        "nodes": [{"id": n, "type": "math"} for n in ("x", "double", "square", "sum")],
        "edges": [
            {"from": "x.value", "to": "double.a"},
            {"from": "x.value", "to": "square.a"},
            {"from": "double.result", "to": "sum.a"},
            {"from": "square.error", "to": "sum.b"},
        ],
    }
    placed = layout(definition, {"x": "completed"})
    by_id = {n.id: n for n in placed.nodes}
    assert by_id["x"].x < by_id["double"].x == by_id["square"].x < by_id["sum"].x
    assert by_id["double"].y != by_id["square"].y
    assert by_id["x"].status == "completed"
    assert by_id["sum"].status is None
    assert [e.error for e in placed.edges] == [False, False, False, True]


class Keys:
    def __init__(self) -> None:
        self.known = {hash_key("tt_good"): Principal("team-a", is_admin=True)}

    async def principal_by_key_hash(self, key_hash: str) -> Principal | None:
        return self.known.get(key_hash)


async def test_session_cookie_is_signed_expires_and_follows_revocation() -> None:
    keys = Keys()
    sessions = Sessions(keys, secret="s1")
    cookie = sessions.issue("tt_good")
    assert "tt_good" not in cookie
    viewer = await sessions.viewer(cookie)
    assert (viewer.owner_id, viewer.is_admin) == ("team-a", True)
    assert viewer.csrf == (await sessions.viewer(cookie)).csrf
    assert viewer.csrf != (await sessions.viewer(sessions.issue("tt_good"))).csrf

    with pytest.raises(NotSignedIn):
        await Sessions(keys, secret="another").viewer(cookie)
    payload, signature = cookie.rsplit(".", 1)
    with pytest.raises(NotSignedIn):
        await sessions.viewer(payload[:-2] + "xx." + signature)
    with pytest.raises(NotSignedIn):
        await Sessions(keys, secret="s1", ttl_s=-1).viewer(
            Sessions(keys, "s1", -1).issue("tt_good")
        )
    keys.known.clear()  # revoked
    with pytest.raises(NotSignedIn):
        await sessions.viewer(cookie)
