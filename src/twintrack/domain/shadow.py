"""Which completed executions get a shadow run, and the shadow's id: pure rules.

The sample is decided by a hash of the execution id, so every process (and every re-run of
the sweep) agrees on it without storing anything, and raising SHADOW_PERCENT only adds
executions to the sample. The shadow's id derives from the original's, so scheduling it twice
finds the same row (at most one shadow per execution).
"""

from __future__ import annotations

import hashlib

from twintrack.domain.ids import EXECUTION_PREFIX


def shadow_bucket(execution_id: str) -> int:
    """A stable bucket 0..99 for an execution (independent of the owner's rollout bucket)."""
    digest = hashlib.sha256(f"shadow/{execution_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def shadow_sampled(execution_id: str, percent: int) -> bool:
    """Whether the execution is in the shadow sample at `percent` (0: none, 100: all)."""
    return shadow_bucket(execution_id) < percent


def shadow_execution_id(original_id: str) -> str:
    """The id of the one shadow run of `original_id`."""
    digest = hashlib.sha256(f"shadow-of/{original_id}".encode()).hexdigest()[:32]
    return f"{EXECUTION_PREFIX}_{digest}"
