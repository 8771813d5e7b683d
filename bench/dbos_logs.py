"""What DBOS's queue threads said in a run's worker logs: their contention back-offs.

DBOS 3.4's queue thread doubles its polling interval (up to 120 s) each time a poll hits a
serialization conflict and logs it, then shrinks it by 0.9 per quiet poll: several workers polling
one queue under load can slow each other's dequeue. Counting the lines per worker log says
whether that happened during a measurement (issue #10 item 2).
"""

from __future__ import annotations

from pathlib import Path

CONTENTION = "Contention detected in queue thread"


def contention_line(log_dir: Path) -> str:
    counts = {
        path.stem: path.read_text(errors="replace").count(CONTENTION)
        for path in sorted(log_dir.glob("*.log"))
    }
    shown = ", ".join(f"{name} {n}" for name, n in counts.items()) or "no worker logs"
    return f'DBOS queue-thread contention back-offs ("{CONTENTION}") so far: {shown}.'
