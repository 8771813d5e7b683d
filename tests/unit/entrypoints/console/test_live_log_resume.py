"""Where the live log's stream resumes: after the browser's `Last-Event-ID` or at the page's
`from_index`, whichever is later, so a reconnect neither repeats nor skips an event."""

from __future__ import annotations

import pytest

# First: the console's route modules import only after the app's (twintrack.entrypoints.api
# re-exports create_app, which mounts them: imported alone, routes/executions.py meets itself).
import twintrack.entrypoints.api  # noqa: F401
from twintrack.entrypoints.console.routes.executions import MAX_INDEX, _start_index


@pytest.mark.parametrize(
    ("from_index", "last_event_id", "start"),
    [
        (0, None, 0),  # the first connection: the whole stream
        (5, None, 5),  # the page reopened the stream after row 4
        (0, "4", 5),  # the browser reconnected by itself after event 4
        (3, "7", 8),  # both: the later wins, never event 4..7 twice
        (9, "2", 9),  # a stale header never rewinds past what the page shows
        (2, " 6 ", 7),
        (2, "", 2),
        (2, "x", 2),  # not an index: ignored
        (2, "-1", 2),
        (2, "٣", 2),  # a decimal digit, but not ASCII
        (2, str(MAX_INDEX), 2),  # past the largest index: ignored, not an overflow
    ],
)
def test_the_stream_resumes_after_what_was_shown(
    from_index: int, last_event_id: str | None, start: int
) -> None:
    assert _start_index(from_index, last_event_id) == start
