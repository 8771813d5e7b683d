"""The execution workflow: one durable step that runs the whole flow on the worker's loop.

The flow state stays in memory for the step; what must survive a crash lives in Postgres
(the execution row, its claim, events, commands). If the worker dies mid-step, DBOS recovery
runs the step again — on this executor after a restart, or on another one through the
sweeper — and the run host continues the event stream with `execution.retrying`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from dbos import DBOS
from twintrack.adapters.dbos.names import WORKFLOW_NAME


class StepHost(Protocol):
    loop: asyncio.AbstractEventLoop

    async def execute(self, execution_id: str, traceparent: str | None = None) -> str: ...


_host: StepHost | None = None


def serve(host: StepHost | None) -> None:
    """Point the workflow at the worker of this process (None when it stops)."""
    global _host
    _host = host


@DBOS.step(name="twintrack_run_flow")
async def run_flow(execution_id: str, traceparent: str | None = None) -> str:
    host = _host
    if host is None:
        raise RuntimeError("no DBOS worker serves executions in this process")
    # DBOS runs async workflows on its own loop; our clients live on the worker's loop.
    future = asyncio.run_coroutine_threadsafe(host.execute(execution_id, traceparent), host.loop)
    return await asyncio.wrap_future(future)


@DBOS.workflow(name=WORKFLOW_NAME)
async def execution_workflow(execution_id: str, traceparent: str | None = None) -> str:
    """`traceparent`: the W3C context of the start that enqueued it (None for a workflow made
    ahead at creation, or enqueued with tracing off: the run then continues the row's)."""
    return await run_flow(execution_id, traceparent)
