"""Per-owner limits, so one key cannot exhaust the cluster.

Pure rules: callers count (under a lock that makes the count exact) and ask here whether one more
fits. Each refusal is a `LimitExceeded` naming the setting and its value, which the API answers
429 and a node reports as its failure.

* `MAX_EXECUTIONS_PER_TREE`: members of one tree (the root and all its descendants). A child
  that would pass it is not created; its emit node fails instead.
* `MAX_RUNNING_EXECUTIONS_PER_OWNER`: an owner's started, unfinished executions (queued, running
  or paused: holding a worker slot or waiting for one), children included. A start over it is
  refused, so the execution stays `created` and can be started once a slot frees. It keeps
  other owners' work running only while it is below the cluster's slots (workers x
  WORKER_CONCURRENCY or DBOS_WORKER_CONCURRENCY), which no default can know: the default fits
  one owner's ordinary burst (a 100-child fan-out and its root), and the README says how to
  size it.
* `MAX_SSE_STREAMS_PER_KEY`: event streams open at once with one API key, per API process.
"""

from __future__ import annotations

from dataclasses import dataclass

from twintrack.domain.execution import ExecutionStatus

# The statuses that hold a worker slot or wait in a queue for one.
RUNNING_STATUSES = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.PAUSED)

DEFAULT_MAX_EXECUTIONS_PER_TREE = 1000
DEFAULT_MAX_RUNNING_EXECUTIONS_PER_OWNER = 200
DEFAULT_MAX_SSE_STREAMS_PER_KEY = 100


class LimitExceeded(Exception):
    """One more would pass `setting` (whose value is `limit`); `message` says what was refused."""

    def __init__(self, setting: str, limit: int, message: str) -> None:
        super().__init__(f"{message}: {setting} is {limit}")
        self.setting = setting
        self.limit = limit

    @property
    def details(self) -> dict[str, str | int]:
        return {"limit": self.setting, "value": self.limit}


@dataclass(frozen=True)
class OwnerLimits:
    max_executions_per_tree: int = DEFAULT_MAX_EXECUTIONS_PER_TREE
    max_running_executions_per_owner: int = DEFAULT_MAX_RUNNING_EXECUTIONS_PER_OWNER

    def check_tree(self, size_with_new: int, root_id: str) -> None:
        """`size_with_new`: the tree's members counting the one being added."""
        if size_with_new > self.max_executions_per_tree:
            raise LimitExceeded(
                "MAX_EXECUTIONS_PER_TREE",
                self.max_executions_per_tree,
                f"tree {root_id} is full, no child can be added",
            )

    def check_running(self, running: int, owner_id: str) -> None:
        """`running`: the owner's started, unfinished executions, without the one to start."""
        if running >= self.max_running_executions_per_owner:
            raise LimitExceeded(
                "MAX_RUNNING_EXECUTIONS_PER_OWNER",
                self.max_running_executions_per_owner,
                f"owner {owner_id} already has {running} started, unfinished executions",
            )


def check_streams(open_streams: int, limit: int) -> None:
    """`open_streams`: the key's streams open now, without the one asked for."""
    if open_streams >= limit:
        raise LimitExceeded(
            "MAX_SSE_STREAMS_PER_KEY",
            limit,
            f"this API key already has {open_streams} open streams",
        )
