"""The DBOS worker: DBOS dequeues execution workflows; their step runs here, under a claim.

The claim gives DBOS-track runs what Kafka-track runs have: a fenced lease, heartbeats,
commands and the same run loop. A re-run (DBOS recovery after a crash) takes the execution
over once the old lease has run out, as a new attempt.
"""

from __future__ import annotations

import asyncio
import math

import structlog

from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.store.retry import retry_transient
from twintrack.tracks.claims import ACTIVE
from twintrack.tracks.dbos import workflow
from twintrack.tracks.dbos.runtime import DbosRuntime
from twintrack.tracks.host import RunHost

log = structlog.get_logger()
_CLAIM_POLL_S = 0.25


class DbosWorker:
    def __init__(self, *, runtime: DbosRuntime, host: RunHost, max_attempts: int) -> None:
        self.runtime = runtime
        self.host = host
        self.max_attempts = max_attempts
        self.loop: asyncio.AbstractEventLoop = asyncio.get_event_loop_policy().get_event_loop()

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        workflow.serve(self)
        await self.runtime.launch()
        log.info("dbos worker started", executor_id=self.runtime.executor_id)

    async def stop(self) -> None:
        await self.runtime.destroy()
        workflow.serve(None)
        log.info("dbos worker stopped", executor_id=self.runtime.executor_id)

    async def execute(self, execution_id: str) -> str:
        """The workflow step: claim, run to the end (again if the run was lost), report."""
        host = self.host
        while True:
            # Retried however long the database is down (as DBOS does its own statements): a
            # step that raised would end the workflow in DBOS's ERROR state and leave the
            # execution `queued` (or `running` with no terminal event) for good.
            taken = await retry_transient(
                lambda: host.claims.claim(
                    execution_id,
                    host.worker_id,
                    host.claim_ttl_s,
                    track=Track.DBOS,
                    takeover=True,
                ),
                what=f"claim {execution_id}",
                deadline_s=math.inf,
            )
            if taken is None:
                record = await retry_transient(
                    lambda: host.service.executions.get(execution_id),
                    what=f"read {execution_id}",
                    deadline_s=math.inf,
                )
                if (
                    record.status.is_terminal
                    or record.status is ExecutionStatus.CREATED
                    or record.track is not Track.DBOS
                ):
                    return record.status.value  # ended, stopped, or rerouted to Kafka
                await asyncio.sleep(_CLAIM_POLL_S)  # a previous holder's lease must run out
                continue
            claim, record = taken
            if record.attempt > self.max_attempts:
                await host.claims.transition(claim, ExecutionStatus.RUNNING, release=True)
                reason = f"gave up after {record.attempt - 1} attempts"
                await host.service.fail_unclaimed(execution_id, reason, from_statuses=ACTIVE)
                return ExecutionStatus.FAILED.value
            result = await host.launch(claim, record)
            if result is not None:
                return result.status.value
            # The run was lost (lease, crash) while this worker lives: go again.
            log.warning("dbos run lost; taking it again", execution_id=execution_id)
