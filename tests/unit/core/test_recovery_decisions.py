"""Recovery's decisions on the memory adapters: which expired claims are taken back and which are
given up (with the true last reason), stale queued tasks re-sent a batch at a time, start
timeouts, orphaned children repaired, gone DBOS executors recovered, each with its audit row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from tests.unit.core.support import OWNER, app_with, claimed, new_flow, started, types_of
from twintrack.adapters.memory.stores import RELEASED
from twintrack.bootstrap import MemoryContainer
from twintrack.core.children_sweep import ChildSweeper
from twintrack.core.dead_executors import DeadExecutorSweeper
from twintrack.core.recovery import RecoverySweeper, SweepPolicy, SweepReport
from twintrack.core.recovery_ports import Reason, Recovery
from twintrack.domain.commands import Command
from twintrack.domain.execution import EventsBackend, ExecutionStatus, Track
from twintrack.observability.metrics import REGISTRY

_S = ExecutionStatus


def sweeper(app: MemoryContainer, **policy: Any) -> RecoverySweeper:
    return RecoverySweeper(
        service=app.service,
        store=app.recovery.store,
        audit=app.audit,
        kafka_queue=app.ports.queues[Track.KAFKA],
        policy=SweepPolicy(max_attempts=app.settings.max_attempts, **policy),
    )


def audit_of(app: MemoryContainer, execution_id: str) -> list[tuple[str, str | None, int]]:
    return [(r.reason.value, r.worker_id, r.attempt) for r in app.recovery.audit.of(execution_id)]


def counted(track: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "twintrack_recoveries_total", {"track": track, "reason": reason}
    )
    return value or 0.0


async def running_on(app: MemoryContainer, worker: str) -> str:
    record = await started(app, await new_flow(app))
    await claimed(app, record.id, worker)
    return record.id


# -- expired claims ---------------------------------------------------------------------------


async def test_an_expired_claim_is_taken_back_and_the_execution_sent_again() -> None:
    app = app_with(max_attempts=2)
    ex = await running_on(app, "w-a")
    await app.claims.expire_now(ex)
    before = counted("kafka", "expired_claim")
    report = await sweeper(app).sweep()
    assert report.requeued == [ex]
    assert (await app.executions.get(ex)).status is _S.QUEUED
    assert app.stores.claims.leases[ex].worker_id == RELEASED  # the old holder is fenced out
    assert app.ports.queues[Track.KAFKA].enqueued[-1] == (ex, 2)
    (row,) = app.recovery.audit.of(ex)
    assert (row.reason, row.worker_id, row.attempt) == (Reason.EXPIRED_CLAIM, "w-a", 1)
    assert row.detail == "attempt 1 on worker w-a stopped renewing its claim (lease expired)"
    assert counted("kafka", "expired_claim") == before + 1


async def test_a_live_claim_is_left_alone() -> None:
    app = app_with(max_attempts=1)
    ex = await running_on(app, "w-a")
    assert await sweeper(app).sweep() == SweepReport()
    assert not await app.attempts().give_up_if_exhausted(ex)  # w-a still runs it
    assert (await app.executions.get(ex)).status is _S.RUNNING
    assert audit_of(app, ex) == []


async def test_the_last_attempt_is_given_up_quoting_the_failure_its_worker_saw() -> None:
    app = app_with(max_attempts=1)
    ex = await running_on(app, "w-a")
    crash = "attempt 1 on worker w-a crashed: RuntimeError: the disk is full"
    await app.attempts().run_failed(
        execution_id=ex, track=Track.KAFKA, worker_id="w-a", attempt=1, detail=crash
    )
    await app.claims.expire_now(ex)
    before = counted("kafka", "max_attempts")
    assert (await sweeper(app).sweep()).gave_up == [ex]
    record = await app.executions.get(ex)
    assert record.status is _S.FAILED
    assert record.error_message == f"gave up after 1 failed attempt (MAX_ATTEMPTS=1): {crash}"
    assert types_of(app, ex)[-1] == "execution.failed"
    assert app.stores.claims.leases[ex].worker_id == RELEASED
    assert audit_of(app, ex) == [("run_failed", "w-a", 1), ("max_attempts", "w-a", 1)]
    assert counted("kafka", "max_attempts") == before + 1
    assert counted("kafka", "run_failed") == 0  # a worker's report is a row, not a recovery


async def test_a_handover_spends_no_attempt_and_the_give_up_names_the_silent_worker() -> None:
    app = app_with(max_attempts=2)
    record = await started(app, await new_flow(app))
    ex = record.id
    claim, _ = await claimed(app, ex, "w-a")
    assert await app.claims.hand_back(claim) is not None  # attempt 1: handed over
    await claimed(app, ex, "w-b")  # attempt 2 dies: 1 failed run of 2
    await app.claims.expire_now(ex)
    assert (await sweeper(app).sweep()).requeued == [ex]
    await claimed(app, ex, "w-c")  # attempt 3 dies: 2 failed runs of 2
    await app.claims.expire_now(ex)
    assert (await sweeper(app).sweep()).gave_up == [ex]
    failed = await app.executions.get(ex)
    assert failed.attempt == 3
    assert failed.error_message == (
        "gave up after 2 failed attempts (MAX_ATTEMPTS=2): attempt 3 on worker w-c stopped "
        "renewing its claim (lease expired)"
    )
    assert audit_of(app, ex) == [("expired_claim", "w-b", 2), ("max_attempts", "w-c", 3)]


async def test_the_dbos_worker_taking_over_its_own_lost_run_gives_it_up() -> None:
    """A live claim held by the taker itself means its own run ended: the rule applies."""
    app = app_with(max_attempts=1)
    ex = await running_on(app, "w-a")
    attempts = app.attempts()
    assert not await attempts.give_up_if_exhausted(ex, taker="w-b")
    assert await attempts.give_up_if_exhausted(ex, taker="w-a")
    assert (await app.executions.get(ex)).error_message == (
        "gave up after 1 failed attempt (MAX_ATTEMPTS=1): attempt 1 on worker w-a stopped "
        "renewing its claim (lease expired)"
    )


async def test_a_give_up_that_cannot_commit_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = app_with(max_attempts=1)
    ex = await running_on(app, "w-a")
    await app.claims.expire_now(ex)

    async def refused(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("refused by the test")

    monkeypatch.setattr(app.service, "fail_locked", refused)
    before = counted("kafka", "max_attempts")
    with pytest.raises(RuntimeError, match="refused by the test"):
        await sweeper(app).sweep()
    assert app.stores.claims.leases[ex].worker_id == "w-a"  # not released
    assert (await app.executions.get(ex)).status is _S.RUNNING
    assert audit_of(app, ex) == []
    assert counted("kafka", "max_attempts") == before
    monkeypatch.undo()
    assert (await sweeper(app).sweep()).gave_up == [ex]


# -- stale queued, start timeouts ---------------------------------------------------------------


async def test_stale_queued_executions_are_resent_a_batch_at_a_time(app: MemoryContainer) -> None:
    flow_id = await new_flow(app)
    ids = [(await started(app, flow_id)).id for _ in range(3)]
    for age, ex in enumerate(ids):  # the first is the oldest
        app.recovery.store.backdate(ex, 3600 * (10 - age))
    fresh = (await started(app, flow_id)).id
    sweep = sweeper(app, batch=2, stale_queued_s=60.0)
    queue = app.ports.queues[Track.KAFKA]
    sent = len(queue.enqueued)
    assert (await sweep.sweep()).resent == ids[:2]
    assert (await sweep.sweep()).resent == ids[2:]
    assert (await sweep.sweep()).resent == []  # each was touched: left alone for a period
    assert queue.enqueued[sent:] == [(ex, 1) for ex in ids]
    assert fresh not in [ex for ex, _ in queue.enqueued[sent:]]
    assert [r.reason for ex in ids for r in app.recovery.audit.of(ex)] == [Reason.STALE_QUEUED] * 3


async def test_a_root_never_started_in_time_fails_with_start_timeout(
    app: MemoryContainer,
) -> None:
    flow_id = await new_flow(app)
    late = await app.service.create(OWNER, flow_id)
    recent = await app.service.create(OWNER, flow_id)
    child = await app.service.create(OWNER, flow_id, parent=recent)
    for ex in (late.id, child.id):
        app.recovery.store.backdate(ex, 400)
    report = await sweeper(app, start_timeout_s=300.0).sweep()
    assert report.timed_out == [late.id]
    failed = await app.executions.get(late.id)
    assert (failed.status, failed.error_message) == (_S.FAILED, "start timeout")
    assert types_of(app, late.id)[-1] == "execution.failed"
    assert (await app.executions.get(recent.id)).status is _S.CREATED
    assert (await app.executions.get(child.id)).status is _S.CREATED  # its parent's business


# -- orphaned children --------------------------------------------------------------------------


def child_sweeper(app: MemoryContainer) -> ChildSweeper:
    return ChildSweeper(
        service=app.service, store=app.recovery.store, audit=app.audit, grace_s=10.0
    )


async def test_a_child_never_started_under_an_ended_parent_fails_saying_why(
    app: MemoryContainer,
) -> None:
    flow_id = await new_flow(app)
    parent = await app.service.create(OWNER, flow_id)
    child = await app.service.create(OWNER, flow_id, parent=parent)
    await app.service.fail_unclaimed(parent.id, "boom", from_statuses=[_S.CREATED])
    sweep = child_sweeper(app)
    assert (await sweep.sweep()).failed == []  # within the grace: a spawn may be on its way
    app.recovery.store.backdate(parent.id, 11)
    assert (await sweep.sweep()).failed == [child.id]
    repaired = await app.executions.get(child.id)
    assert repaired.status is _S.FAILED
    assert repaired.error_message == (
        f"never started: parent {parent.id} ended failed before starting it "
        "(its run stopped between creating and starting the child)"
    )
    assert [r.reason for r in app.recovery.audit.of(child.id)] == [Reason.ORPHAN_CHILD]
    assert (await sweep.sweep()).failed == []


async def test_a_child_whose_parent_is_gone_fails(app: MemoryContainer) -> None:
    flow_id = await new_flow(app)
    parent = await app.service.create(OWNER, flow_id)
    child = await app.service.create(OWNER, flow_id, parent=parent)
    del app.stores.executions.records[parent.id]
    assert (await child_sweeper(app).sweep()).failed == [child.id]
    assert "is gone" in str((await app.executions.get(child.id)).error_message)


async def test_children_a_stopped_parent_never_told_are_stopped(app: MemoryContainer) -> None:
    flow_id = await new_flow(app)
    parent = await app.service.create(OWNER, flow_id)
    unstarted = await app.service.create(OWNER, flow_id, parent=parent)
    running = await app.service.create(OWNER, flow_id, parent=parent)
    await app.service.start(None, running.id)
    await claimed(app, running.id)
    # The stop of the tree ended the parent, then its process died before it descended.
    await app.executions.transition(parent.id, _S.STOPPED)
    app.recovery.store.backdate(parent.id, 11)
    report = await child_sweeper(app).sweep()
    assert sorted(report.stopped) == sorted([unstarted.id, running.id])
    assert (await app.executions.get(unstarted.id)).status is _S.STOPPED
    # The running one is told through its worker's command channel.
    assert app.ports.commands.of(running.id) == [(Command.STOP, f"parent {parent.id} was stopped")]
    assert (await child_sweeper(app).sweep()).stopped == []  # told once


# -- gone DBOS executors ------------------------------------------------------------------------


class FakeWorkflows:
    executor_id = "me"

    def __init__(self, pending: Mapping[str, list[str]], done: Mapping[str, str]) -> None:
        self.pending = pending
        self.done = done
        self.redelivered: list[dict[str, EventsBackend]] = []

    async def recover(self, executor_ids: Sequence[str]) -> list[str]:
        return [w for e in executor_ids for w in self.pending.get(e, [])]

    async def redeliver(self, executions: Mapping[str, EventsBackend]) -> dict[str, str]:
        self.redelivered.append(dict(executions))
        return {e: self.done[e] for e in executions if e in self.done}


async def test_a_gone_executors_workflows_are_recovered_with_an_audit_row_each() -> None:
    app = app_with(enable_dbos_execution=True)
    ex = await running_on(app, "dead")
    workers = app.stores.workers
    for worker in ("dead", "me", "alive"):
        await workers.register(worker, ["dbos"])
    await workers.stopped("dead")
    await workers.stopped("me")  # this process's own executor is never recovered by itself
    workflows = FakeWorkflows({"dead": [ex], "me": ["not-me"]}, {})
    sweep = DeadExecutorSweeper(
        store=app.recovery.store,
        audit=app.audit,
        registry=workers,
        workflows=workflows,
        silence_s=60,
    )
    assert await sweep.sweep() == [ex]
    assert app.recovery.audit.of(ex) == [
        Recovery(
            ex,
            Track.DBOS,
            Reason.DEAD_EXECUTOR,
            1,
            "dead",
            "attempt 1 on worker dead stopped renewing its claim (its DBOS executor stopped or "
            "went silent)",
        )
    ]


async def test_dbos_executions_no_workflow_will_run_are_redelivered() -> None:
    app = app_with(enable_dbos_execution=True)
    flow_id = await new_flow(app)
    stuck, fresh = [(await started(app, flow_id)).id for _ in range(2)]
    app.recovery.store.backdate(stuck, 60)
    workflows = FakeWorkflows({}, {stuck: "enqueued its missing workflow"})
    sweep = DeadExecutorSweeper(
        store=app.recovery.store,
        audit=app.audit,
        registry=app.stores.workers,
        workflows=workflows,
        silence_s=60,
        repair_queued_s=30,
    )
    assert await sweep.repair_queued() == [stuck]
    assert workflows.redelivered == [{stuck: EventsBackend.KAFKA}]
    assert [(r.reason, r.detail) for r in app.recovery.audit.of(stuck)] == [
        (Reason.REPAIR_QUEUED, "enqueued its missing workflow")
    ]
    assert app.recovery.audit.of(fresh) == []
    assert await sweep.repair_queued() == []  # touched: left alone for another period
