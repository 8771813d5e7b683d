"""Which track a new execution goes to (the flag, or a sticky per-owner cohort), and each
track's phase in a migration."""

from __future__ import annotations

import hashlib
from enum import StrEnum

from twintrack.domain.execution import EventsBackend, Track


def owner_bucket(owner_id: str) -> int:
    """A stable bucket 0..99 for an owner: the same owner always lands in the same bucket."""
    digest = hashlib.sha256(owner_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def choose_track(owner_id: str, *, enable_dbos: bool, rollout_percent: int | None) -> Track:
    """A percentage, when set, overrides the flag: owners in buckets below it go to DBOS.

    Raising the percentage only adds owners to the cohort, lowering it only removes them.
    """
    if rollout_percent is not None:
        return Track.DBOS if owner_bucket(owner_id) < rollout_percent else Track.KAFKA
    return Track.DBOS if enable_dbos else Track.KAFKA


def events_backend_for(track: Track, configured: EventsBackend) -> EventsBackend:
    """DBOS streams only exist for DBOS-track executions; a Kafka-track one writes to Kafka."""
    return configured if track is Track.DBOS else EventsBackend.KAFKA


class TrackPhase(StrEnum):
    """Where a track is in a migration (Temporal's worker-versioning states).

    `active` takes every new execution, `ramping` a share of them, `draining` none while some
    of its executions are unfinished, `drained` none and nothing unfinished (its workers may go).
    """

    ACTIVE = "active"
    RAMPING = "ramping"
    DRAINING = "draining"
    DRAINED = "drained"


def dbos_share(*, enable_dbos: bool, rollout_percent: int | None) -> int:
    """The percentage of owners whose new executions go to DBOS under these switches."""
    if rollout_percent is not None:
        return rollout_percent
    return 100 if enable_dbos else 0


def track_phase(share: int, unfinished: int | None = None) -> TrackPhase:
    """The phase of a track receiving `share` % of new executions; with no share, `drained`
    once `unfinished` is known to be 0 (None: not counted, so still `draining`)."""
    if share >= 100:
        return TrackPhase.ACTIVE
    if share > 0:
        return TrackPhase.RAMPING
    return TrackPhase.DRAINED if unfinished == 0 else TrackPhase.DRAINING


def track_phases(
    *, enable_dbos: bool, rollout_percent: int | None, unfinished: dict[Track, int] | None = None
) -> dict[Track, TrackPhase]:
    """Both tracks' phases: DBOS gets the cohort's share, Kafka the rest."""
    dbos = dbos_share(enable_dbos=enable_dbos, rollout_percent=rollout_percent)
    counts = unfinished or {}
    return {
        Track.KAFKA: track_phase(100 - dbos, counts.get(Track.KAFKA)),
        Track.DBOS: track_phase(dbos, counts.get(Track.DBOS)),
    }
