"""The client's SSE decoder and stream position, without any I/O."""

from __future__ import annotations

import json

import pytest

from twintrack.client._sse import Decoder, Message, StreamPosition
from twintrack.client.errors import EventsExpired, ProtocolError, TwintrackError
from twintrack.domain.events import Event, EventType


def feed(lines: list[str]) -> list[Message]:
    decoder = Decoder()
    return [m for line in lines if (m := decoder.feed(line)) is not None]


def event_message(execution_id: str, index: int, type: EventType = EventType.NODE_LOG) -> Message:
    event = Event(execution_id=execution_id, index=index, type=type)
    return Message(event=type.value, data=event.model_dump_json(), id=str(index))


def test_messages_are_dispatched_on_blank_lines_and_pings_are_ignored() -> None:
    messages = feed(
        [
            ": ping - 2026-01-01",
            "id: 0",
            "event: execution.created",
            'data: {"a": 1}',
            "",
            "",  # a second blank line dispatches nothing
            "data:first",
            "data: second",
            "retry: 1000",
            "unknown: field",
            "",
        ]
    )
    assert messages == [
        Message(event="execution.created", data='{"a": 1}', id="0"),
        # no `event:`: the default type; the last id stays until a new one comes
        Message(event="message", data="first\nsecond", id="0"),
    ]


def test_a_message_cut_off_by_a_dropped_connection_is_never_dispatched() -> None:
    decoder = Decoder()
    assert decoder.feed("id: 3") is None
    assert decoder.feed('data: {"half": ') is None
    # The connection drops here; the reconnect gets a fresh decoder and the whole message.


def test_only_one_leading_space_is_stripped_and_a_field_without_colon_is_a_name() -> None:
    assert feed(["data:  two spaces", ""]) == [Message("message", " two spaces", None)]
    assert feed(["data", ""]) == [Message("message", "", None)]


def test_the_position_yields_each_index_once_in_order_and_ends_at_the_terminal() -> None:
    position = StreamPosition("ex_1", from_index=2)
    assert position.last_event_id is None
    assert position.accept(event_message("ex_1", 1)) is None  # before from_index: dropped
    assert position.accept(event_message("ex_1", 2)) is not None
    assert position.last_event_id == "2"
    assert position.accept(event_message("ex_1", 2)) is None  # a replayed duplicate
    assert not position.ended
    done = position.accept(event_message("ex_1", 3, EventType.EXECUTION_COMPLETED))
    assert done is not None
    assert done.index == 3
    assert position.ended
    assert position.delivered == 2


def test_a_gap_or_a_foreign_event_is_a_protocol_error() -> None:
    position = StreamPosition("ex_1")
    with pytest.raises(ProtocolError) as gap:
        position.accept(event_message("ex_1", 1))
    assert gap.value.code == "stream_gap"
    with pytest.raises(ProtocolError) as foreign:
        position.accept(event_message("ex_2", 0))
    assert foreign.value.code == "invalid_event"
    with pytest.raises(ProtocolError):
        position.accept(Message("node.log", "{not json", "0"))


def test_the_streams_error_message_becomes_events_expired() -> None:
    error = {"error": {"code": "events_expired", "message": "gone", "earliest_index": 7}}
    with pytest.raises(EventsExpired) as expired:
        StreamPosition("ex_1").accept(Message("error", json.dumps(error), None))
    assert expired.value.earliest_index == 7
    assert expired.value.code == "events_expired"
    other = {"error": {"code": "something_else", "message": "m"}}
    with pytest.raises(TwintrackError) as unknown:
        StreamPosition("ex_1").accept(Message("error", json.dumps(other), None))
    assert unknown.value.code == "something_else"
