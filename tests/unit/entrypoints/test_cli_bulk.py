"""`--filter KEY=VALUE` of the bulk CLI verbs (entrypoints/cli/bulk.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import typer

from twintrack.core.bulk import ExecutionFilter
from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.entrypoints.cli.bulk import parse_filter


def test_every_key_parses() -> None:
    where = parse_filter(
        [
            "track=dbos",
            "status=queued,created",
            "flow=fl_1",
            "owner=team-a",
            "created-before=2026-12-02T05:00:00+00:00",
            "created_after=2026-12-02T04:00:00",
        ]
    )
    assert where == ExecutionFilter(
        track=Track.DBOS,
        statuses=(ExecutionStatus.QUEUED, ExecutionStatus.CREATED),
        flow_id="fl_1",
        owner_id="team-a",
        created_before=datetime(2026, 12, 2, 5, tzinfo=UTC),
        created_after=datetime(2026, 12, 2, 4, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    "bad", ["track", "track=", "track=sqs", "status=done", "colour=red", "created-before=today"]
)
def test_a_bad_filter_exits_2(bad: str) -> None:
    with pytest.raises(typer.Exit) as caught:
        parse_filter([bad])
    assert caught.value.exit_code == 2
