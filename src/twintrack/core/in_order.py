"""Reader-side ordering shared by every event bus: exactly the indices from a start, once each."""

from __future__ import annotations

from twintrack.domain.events import Event


class InOrderReader:
    """Turns at-least-once, possibly reordered events into the exact sequence from `from_index`.

    Below the next expected index: a duplicate, dropped. Above it: held until the gap fills.
    `ended` once the terminal event is delivered, or when a terminal event below `from_index`
    shows the stream ended before the reader's start (an SSE resume after the end).
    """

    def __init__(self, from_index: int) -> None:
        self.next_index = from_index
        self.ended = False
        self._held: dict[int, Event] = {}

    def stale(self, index: int) -> bool:
        return index < self.next_index or index in self._held

    def push(self, event: Event) -> list[Event]:
        if event.index < self.next_index:
            self.ended = self.ended or event.type.is_terminal
            return []
        self._held.setdefault(event.index, event)
        ready: list[Event] = []
        while not self.ended and self.next_index in self._held:
            nxt = self._held.pop(self.next_index)
            ready.append(nxt)
            self.next_index += 1
            self.ended = nxt.type.is_terminal
        return ready
