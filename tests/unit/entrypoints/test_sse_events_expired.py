"""An SSE stream whose events are gone ends with one `error` message a client can act on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from twintrack.core.ports import EventsExpired
from twintrack.domain.events import Event, EventType
from twintrack.entrypoints.api.limits import StreamSlots
from twintrack.entrypoints.api.routes.events import _messages


async def _gone_after_one() -> AsyncIterator[Event]:
    yield Event(execution_id="ex_1", index=3, type=EventType.NODE_LOG, data={})
    raise EventsExpired("ex_1", 4, 9, "offset 17 of index 0 is gone")


async def test_a_stream_whose_events_expired_ends_with_an_error_message() -> None:
    slots = StreamSlots(per_key=1)
    slot = slots.acquire("tt_key")
    messages = [m async for m in _messages(_gone_after_one(), "kafka", slot)]
    assert [m.event for m in messages] == ["node.log", "error"]
    error = json.loads(str(messages[-1].data))["error"]
    assert error["code"] == "events_expired"
    assert error["earliest_index"] == 9
    assert "from index 4 are no longer in Kafka" in error["message"]
    assert slots.open_streams("tt_key") == 0  # the ended stream gave its slot back
