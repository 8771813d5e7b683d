"""The chaos soak end to end at a tiny size: it injects every fault it promises (a worker
SIGKILL, a PostgreSQL restart on the same port, a broker stall), ends within its bounds, and
reports counts that add up. Whether the counts are zero is the soak's finding, not this test's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from bench import soak, soak_report
from bench.chaos import soak_servers
from bench.config import MODES, Mode, SoakSizes
from bench.soak_check import TERMINAL_STATUSES, Counts

from twintrack.observability.logs import configure_logging

pytestmark = pytest.mark.integration

TINY = SoakSizes(
    executions=20,
    clients=10,
    rate=5.0,
    delay_ms=300,
    kill_every_s=1.0,
    max_kills=1,
    pg_down_s=1.0,
    stall_s=2.0,
    drain_s=20.0,
    follow_s=20.0,
    settings={
        "CLAIM_TTL_S": "3",
        "RECOVERY_SWEEP_INTERVAL_S": "0.3",
        "KAFKA_SESSION_TIMEOUT_MS": "3000",
        "MAX_ATTEMPTS": "10",
        "LOG_FORMAT": "json",
    },
)


@pytest.fixture
def json_logs() -> Iterator[None]:
    """The API runs in the test's loop: JSON logs, as the soak runs it (the console renderer
    spends seconds of loop time on each traceback while the database is down)."""
    saved = structlog.get_config()
    configure_logging("WARNING", "json")
    yield
    structlog.configure(**saved)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
async def test_soak_injects_every_fault_and_reports_counts_that_add_up(
    mode: Mode, tmp_path: Path, json_logs: None
) -> None:
    with soak_servers() as own:
        pid_before = own.postgres.pid
        run = await soak.soak_mode(own, mode, TINY, tmp_path)
        assert own.postgres.pid != pid_before, "PostgreSQL was not restarted"
    data = soak_report.summarize(run)
    counts = Counts(**data["counts"])

    # every execution is accounted for exactly once
    assert counts.accepted + counts.refused == TINY.executions
    ended = sum(o.final_status in TERMINAL_STATUSES for o in run.observed)
    assert ended + counts.lost + counts.hung == counts.accepted
    assert counts.completed + counts.failed + counts.stopped == ended
    assert all(v >= 0 for v in vars(counts).values() if isinstance(v, int))

    # the faults happened as planned
    assert data["kills"] == 1
    assert data["killed_holding_claims"] >= 1
    restart, stall = data["postgres_restart"], data["broker_stall"]
    assert restart["down_s"] >= TINY.pg_down_s
    assert stall["stall_s"] >= TINY.stall_s
    assert restart["api_healthy_after_s"] is not None, "the API never recovered from the restart"
    assert stall["api_ready_after_s"] is not None, "the API never recovered from the stall"
    assert data["duration_s"] < 75, "the soak overran its tiny plan"

    # and the report renders one row per number, in the table and as JSON
    section = soak_report.section(run)
    keys = {row.key for row in section.rows}
    assert {"soak-lost", "soak-twice", "soak-hung", "soak-stream", "soak-effects"} <= keys
    assert {"soak-kill", "soak-postgres", "soak-stall"} <= keys
    assert any(line.startswith("```json") for line in section.details)
