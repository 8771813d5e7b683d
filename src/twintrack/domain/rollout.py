"""Which track a new execution goes to: the flag, or a sticky per-owner cohort."""

from __future__ import annotations

import hashlib

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
