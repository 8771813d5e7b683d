"""Server-Sent Events, parsed line by line, and the position of a reader in one event stream.

Both are free of I/O, so the sync and the async client share them and unit tests drive them
directly. The decoder follows the WHATWG rules the API's stream relies on (`id:` is the event
index, `event:` its type, `data:` the envelope, `:` lines are keep-alives); a message cut off
by a dropped connection is never dispatched, so a reconnect re-reads it whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from twintrack.client.errors import EventsExpired, ProtocolError, TwintrackError
from twintrack.domain.events import Event


@dataclass(frozen=True)
class Message:
    """One dispatched SSE message."""

    event: str
    data: str
    id: str | None


class Decoder:
    """Feed it the stream's lines (without their line endings); it returns whole messages."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None

    def feed(self, line: str) -> Message | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive ping
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None  # `retry:` and unknown fields are ignored, as the spec says

    def _dispatch(self) -> Message | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return Message(event=event or "message", data="\n".join(data), id=self._id)


class StreamPosition:
    """Where a reader of one execution's stream is: the next index it must see.

    `accept` turns each message into the next event, drops one already delivered (a replay
    overlapping a reconnect), and refuses what would break the guarantee (a gap, a body that
    is not an event), so the caller yields every event exactly once, in order.
    """

    def __init__(self, execution_id: str, from_index: int = 0) -> None:
        self.execution_id = execution_id
        self.next_index = from_index
        self.delivered = 0
        self.ended = False

    @property
    def last_event_id(self) -> str | None:
        """`Last-Event-ID` for a reconnect: the last index delivered (None: nothing yet)."""
        return str(self.next_index - 1) if self.delivered else None

    def accept(self, message: Message) -> Event | None:
        if message.event == "error":
            raise _stream_error(message.data)
        try:
            event = Event.model_validate_json(message.data)
        except ValidationError as exc:
            raise ProtocolError(
                f"an event of {self.execution_id} does not parse: {exc.errors()[:1]}",
                code="invalid_event",
            ) from None
        if event.execution_id != self.execution_id:
            raise ProtocolError(
                f"the stream of {self.execution_id} sent an event of {event.execution_id}",
                code="invalid_event",
            )
        if event.index < self.next_index:
            return None
        if event.index > self.next_index:
            raise ProtocolError(
                f"the stream of {self.execution_id} skipped from index {self.next_index} to "
                f"{event.index}",
                code="stream_gap",
            )
        self.next_index += 1
        self.delivered += 1
        self.ended = event.type.is_terminal
        return event


def _stream_error(data: str) -> TwintrackError:
    """The exception for the stream's own `error` message."""
    try:
        error = json.loads(data)["error"]
        code, message = str(error["code"]), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError):
        return ProtocolError(f"the event stream failed: {data[:500]}", code="stream_error")
    if code == "events_expired":
        earliest = error.get("earliest_index")
        return EventsExpired(message, earliest if isinstance(earliest, int) else None)
    return TwintrackError(message, code=code, details=error.get("details"))
