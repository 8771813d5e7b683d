"""The DBOS worker: DBOS dequeues execution workflows; their step runs here, under a claim.

The claim gives DBOS-track runs what Kafka-track runs have: a fenced lease, heartbeats,
commands and the same run loop. A re-run (DBOS recovery after a crash) takes the execution
over once the old lease has run out, as a new attempt, unless the attempts are spent
(core/attempts.py: the same rule and the same give-up as the Kafka sweeper's).

Shutting down (SIGTERM): DBOS's queue thread stops first, so this executor dequeues nothing
new; runs get the grace period; a run handed over meanwhile keeps its workflow step waiting
(never finishing it, so the workflow stays PENDING) until `stop` re-enqueues this executor's
PENDING workflows for the other workers and destroys DBOS.
"""

from __future__ import annotations

import asyncio
import math

import structlog

from twintrack.adapters.dbos import workflow
from twintrack.adapters.dbos.admin import DbosAdminServer
from twintrack.adapters.dbos.runtime import DbosRuntime
from twintrack.adapters.postgres.claims import ACTIVE
from twintrack.core.run_host import RunHost
from twintrack.core.transient import retry_transient
from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.observability.tracing import TaskTaken, task_taken

log = structlog.get_logger()
_CLAIM_POLL_S = 0.25


class DbosWorker:
    def __init__(self, *, runtime: DbosRuntime, host: RunHost) -> None:
        self.runtime = runtime
        self.host = host
        # Built inside the worker's coroutine: the policy's "current" loop may be unset or stale
        # there (it is, after another asyncio.run in the same thread), the running one is not.
        self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        self._parked = 0
        self._admin: DbosAdminServer | None = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        workflow.serve(self)
        await self.runtime.launch()
        config = self.runtime.config
        if config.admin_enabled and self._admin is None:
            self._admin = DbosAdminServer(config.admin_host, config.admin_port)
            self._admin.start()
        log.info("dbos worker started", executor_id=self.runtime.executor_id)

    async def stop_taking_work(self) -> None:
        """Dequeue nothing more; workflows already dequeued go on (or are handed over)."""
        self.host.draining = True
        await self.runtime.stop_dequeuing()

    async def stop(self) -> None:
        """After the host has finished or handed over every run: hand this executor's PENDING
        workflows to the other workers, then destroy DBOS."""
        await self.stop_taking_work()
        if self.runtime.launched:
            try:
                ids = await self.runtime.recover([self.runtime.executor_id])
                if ids:
                    log.info("dbos workflows handed over", ids=ids)
            except Exception:
                log.exception(
                    "re-enqueueing this executor's workflows failed; the "
                    "dead-executor sweeper of another worker takes them over"
                )
        if self._admin is not None:
            admin, self._admin = self._admin, None
            await asyncio.to_thread(admin.stop)
        await self.runtime.destroy()
        workflow.serve(None)
        log.info("dbos worker stopped", executor_id=self.runtime.executor_id)

    async def _park(self, execution_id: str) -> str:
        """Never return: the workflow must stay PENDING so another executor runs it."""
        self._parked += 1
        log.info("dbos run parked for hand-over", execution_id=execution_id)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")  # pragma: no cover

    async def execute(self, execution_id: str, traceparent: str | None = None) -> str:
        """The workflow step: claim, run to the end (again if the run was lost), report.
        `traceparent` (a workflow input) is the start's trace, which the run continues."""
        with task_taken(
            execution_id=execution_id, track=Track.DBOS.value, traceparent=traceparent
        ) as delivery:
            return await self._execute(execution_id, delivery)

    async def _execute(self, execution_id: str, delivery: TaskTaken) -> str:
        host = self.host
        while True:
            if host.draining:
                return await self._park(execution_id)
            # Retried however long the database is down (as DBOS does its own statements): a
            # step that raised would end the workflow in DBOS's ERROR state and leave the
            # execution `queued` (or `running` with no terminal event) for good.
            taken = await retry_transient(
                lambda: host.claims.claim(
                    execution_id, host.worker_id, host.claim_ttl_s, track=Track.DBOS
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
                if record.status in ACTIVE:
                    # The previous run ended without an outcome (its worker died, or this one
                    # lost it): give up if that was the last attempt, else take it over.
                    gave_up = await retry_transient(
                        lambda: host.attempts.give_up_if_exhausted(
                            execution_id, taker=host.worker_id
                        ),
                        what=f"give up {execution_id}",
                        deadline_s=math.inf,
                    )
                    if gave_up:
                        return ExecutionStatus.FAILED.value
                    taken = await retry_transient(
                        lambda: host.claims.claim(
                            execution_id,
                            host.worker_id,
                            host.claim_ttl_s,
                            track=Track.DBOS,
                            takeover=True,
                        ),
                        what=f"take over {execution_id}",
                        deadline_s=math.inf,
                    )
                if taken is None:
                    await asyncio.sleep(_CLAIM_POLL_S)  # a previous holder's lease must run out
                    continue
            claim, record = taken
            record = delivery.claimed(record)
            if host.draining:  # claimed while the worker began to stop
                await host.hand_back(claim, record)
                return await self._park(execution_id)
            result = await host.launch(claim, record)
            if result is not None:
                return result.status.value
            if host.draining:  # handed over by the host
                return await self._park(execution_id)
            # The run was lost (lease, crash) while this worker lives: go again.
            log.warning("dbos run lost; taking it again", execution_id=execution_id)
