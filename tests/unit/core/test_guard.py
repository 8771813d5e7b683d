"""The rollout guard's decisions (core/guard.py) on the memory adapters, with a clock the test
moves: when it holds, when it fails, when it rolls back, and what it never touches."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from twintrack.adapters.memory.rollout import MemoryGuardStore, MemoryRolloutStore
from twintrack.adapters.memory.shadow import MemoryShadowStore
from twintrack.adapters.memory.stores import MemoryExecutionStore
from twintrack.core.guard import GUARD, Guard, GuardPolicy, Verdict, judge
from twintrack.core.live_rollout import RolloutChange, Switches
from twintrack.core.records import ExecutionRecord
from twintrack.core.shadow import MATCHED, MISMATCHED, ShadowRun
from twintrack.domain.execution import EventsBackend, ExecutionOptions, ExecutionStatus, Track

_S = ExecutionStatus
_ids = itertools.count()


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def record(
    clock: Clock, track: Track, status: ExecutionStatus, took_s: float = 0.1, **fields: Any
) -> ExecutionRecord:
    n = next(_ids)
    now = clock.now
    return ExecutionRecord(
        id=f"ex_{n}",
        root_id=f"ex_{n}",
        parent_id=None,
        depth=0,
        owner_id="o",
        flow_id="fl",
        flow_version=1,
        track=track,
        events_backend=EventsBackend.KAFKA,
        status=status,
        options=ExecutionOptions(),
        trigger_events=(),
        outputs={},
        error_message=None,
        error_node_id=None,
        attempt=1,
        next_event_index=1,
        created_at=now - timedelta(seconds=took_s),
        queued_at=now - timedelta(seconds=took_s),
        started_at=None,
        finished_at=now if status.is_terminal else None,
        updated_at=now,
        **fields,
    )


class World:
    """A guard over memory stores at a 10 % DBOS rollout, with finished executions to add."""

    def __init__(self, **policy: Any) -> None:
        self.clock = Clock()
        self.executions = MemoryExecutionStore()
        self.rollout = MemoryRolloutStore(clock=self.clock)
        self.store = MemoryGuardStore(self.executions, clock=self.clock)
        self.rerouted = 0
        options: dict[str, Any] = {
            "window_s": 60,
            "initial_delay_s": 30,
            "min_samples": 10,
            "failures_to_rollback": 2,
            **policy,
        }
        self.guard = Guard(
            store=self.store,
            rollout=self.rollout,
            policy=GuardPolicy(**options),
            reroute=self._reroute,
        )

    async def _reroute(self) -> None:
        self.rerouted += 1

    async def start(self, percent: int = 10) -> None:
        await self.rollout.seed(
            Switches(False, percent, EventsBackend.KAFKA), changed_by="environment", reason="x"
        )

    def add(self, track: Track, status: ExecutionStatus, n: int = 1, took_s: float = 0.1) -> None:
        for _ in range(n):
            r = record(self.clock, track, status, took_s)
            self.executions.records[r.id] = r

    async def percent(self) -> int | None:
        state = await self.rollout.load()
        assert state is not None
        return state.switches.rollout_percent


async def test_no_verdict_while_dbos_receives_nothing() -> None:
    world = World()
    await world.start(percent=0)
    world.clock.advance(100)
    world.add(Track.DBOS, _S.FAILED, 50)
    assert await world.guard.check() is None
    assert world.store.verdicts == []


async def test_inconclusive_within_the_initial_delay_whatever_the_figures() -> None:
    world = World()
    await world.start()
    world.add(Track.DBOS, _S.FAILED, 50)
    world.add(Track.KAFKA, _S.COMPLETED, 50)
    for _ in range(3):
        verdict = await world.guard.check()
        assert verdict is not None
        assert verdict.verdict is Verdict.INCONCLUSIVE
        assert "initial delay" in verdict.reason
    assert await world.percent() == 10


async def test_too_few_samples_hold_and_neither_grow_nor_reset_the_failure_count() -> None:
    world = World(failures_to_rollback=2)
    await world.start()
    world.clock.advance(31)
    world.add(Track.DBOS, _S.FAILED, 10)
    world.add(Track.KAFKA, _S.COMPLETED, 10)
    first = await world.guard.check()
    assert first is not None
    assert (first.verdict, first.consecutive_failures) == (Verdict.FAIL, 1)
    world.clock.advance(61)  # the window moves past them: too few samples now
    world.add(Track.DBOS, _S.FAILED, 3)
    held = await world.guard.check()
    assert held is not None
    assert held.verdict is Verdict.INCONCLUSIVE
    assert "too few samples" in held.reason
    assert held.consecutive_failures == 1
    assert held.figures["dbos"]["finished"] == 3
    assert await world.percent() == 10


async def test_consecutive_failures_roll_new_admissions_back_to_kafka_and_record_why() -> None:
    world = World(failures_to_rollback=2)
    await world.start()
    world.clock.advance(31)
    world.add(Track.DBOS, _S.FAILED, 8)
    world.add(Track.DBOS, _S.COMPLETED, 4)
    world.add(Track.KAFKA, _S.COMPLETED, 20)
    running = record(world.clock, Track.DBOS, _S.RUNNING)
    world.executions.records[running.id] = running

    first = await world.guard.check()
    assert first is not None
    assert (first.verdict, first.rolled_back) == (Verdict.FAIL, False)
    assert await world.percent() == 10
    second = await world.guard.check()
    assert second is not None
    assert (second.verdict, second.consecutive_failures, second.rolled_back) == (
        Verdict.FAIL,
        2,
        True,
    )
    assert "error rate" in second.reason
    assert second.figures["dbos"]["failed"] == 8
    assert second.figures["kafka"]["error_rate"] == 0.0

    assert await world.percent() == 0
    latest = (await world.rollout.history(1))[0]
    assert latest.changed_by == GUARD
    assert "error rate" in latest.reason
    assert "2 failed checks in a row" in latest.reason
    # Running work is never moved; rerouting unstarted work is off by default.
    assert world.executions.records[running.id].track is Track.DBOS
    assert world.rerouted == 0
    # Rolled back: DBOS receives nothing, nothing more to judge.
    assert await world.guard.check() is None


async def test_reroute_of_unstarted_work_only_when_the_setting_asks() -> None:
    world = World(failures_to_rollback=1, reroute_unstarted=True)
    await world.start()
    world.clock.advance(31)
    world.add(Track.DBOS, _S.FAILED, 10)
    verdict = await world.guard.check()
    assert verdict is not None
    assert verdict.rolled_back
    assert world.rerouted == 1


async def test_a_pass_resets_the_count_and_a_new_rollout_version_starts_from_zero() -> None:
    world = World(failures_to_rollback=3)
    await world.start()
    world.clock.advance(31)
    world.add(Track.DBOS, _S.FAILED, 10)
    world.add(Track.KAFKA, _S.COMPLETED, 10)
    for expected in (1, 2):
        verdict = await world.guard.check()
        assert verdict is not None
        assert verdict.consecutive_failures == expected
    # An operator changes the rollout: the count of the old version does not carry over.
    await world.rollout.change(RolloutChange(rollout_percent=20), changed_by="op", reason="r")
    world.clock.advance(31)
    verdict = await world.guard.check()
    assert verdict is not None
    assert (verdict.verdict, verdict.consecutive_failures) == (Verdict.FAIL, 1)
    world.clock.advance(61)
    world.add(Track.DBOS, _S.COMPLETED, 10)
    world.add(Track.KAFKA, _S.COMPLETED, 10)
    passed = await world.guard.check()
    assert passed is not None
    assert (passed.verdict, passed.consecutive_failures) == (Verdict.PASS, 0)
    assert await world.percent() == 20


async def test_slow_dbos_executions_fail_on_the_p99_ratio() -> None:
    world = World(failures_to_rollback=1, max_p99_ratio=2.0)
    await world.start()
    world.clock.advance(31)
    world.add(Track.DBOS, _S.COMPLETED, 10, took_s=1.0)
    world.add(Track.KAFKA, _S.COMPLETED, 10, took_s=0.2)
    verdict = await world.guard.check()
    assert verdict is not None
    assert verdict.verdict is Verdict.FAIL
    assert "p99" in verdict.reason
    assert verdict.figures["dbos"]["p99_s"] == pytest.approx(1.0)


async def test_stuck_dbos_executions_fail_even_before_enough_samples() -> None:
    world = World(failures_to_rollback=1, stuck_after_s=20)
    await world.start()
    world.add(Track.DBOS, _S.QUEUED, 2)
    world.clock.advance(31)
    verdict = await world.guard.check()
    assert verdict is not None
    assert verdict.verdict is Verdict.FAIL
    assert "stuck" in verdict.reason
    assert await world.percent() == 0


def test_without_a_kafka_baseline_the_thresholds_apply_to_dbos_alone() -> None:
    from twintrack.core.guard import CohortFigures

    policy = GuardPolicy(min_samples=10, max_error_rate_delta=0.05)
    kafka = CohortFigures(Track.KAFKA, 0, 0, None, 0)
    healthy = CohortFigures(Track.DBOS, 100, 3, 0.5, 0)
    sick = CohortFigures(Track.DBOS, 100, 10, 0.5, 0)
    assert judge(healthy, kafka, policy)[0] is Verdict.PASS
    verdict, reason = judge(sick, kafka, policy)
    assert verdict is Verdict.FAIL
    assert "no Kafka baseline" in reason


async def test_shadow_mismatches_fail_the_dbos_cohort_and_roll_it_back() -> None:
    world = World(failures_to_rollback=2, max_mismatch_rate=0.1, min_shadow_samples=5)
    shadows = MemoryShadowStore(world.executions, clock=world.clock)
    world.guard.shadows = shadows
    await world.start()
    world.clock.advance(31)
    world.add(Track.DBOS, _S.COMPLETED, 20)  # healthy by every other figure
    world.add(Track.KAFKA, _S.COMPLETED, 20)
    for i in range(6):
        run = ShadowRun(f"ex_o{i}", f"ex_s{i}", "o", "fl", 1, Track.KAFKA, Track.DBOS)
        await shadows.reserve(run)
        await shadows.finish(
            run.original_id, MISMATCHED if i < 2 else MATCHED, {}, None, ledger_size=10
        )
    first = await world.guard.check()
    assert first is not None
    assert first.verdict is Verdict.FAIL
    assert "shadow runs differ" in first.reason
    assert first.figures["shadow"] == {"compared": 6, "mismatched": 2, "mismatch_rate": 2 / 6}
    second = await world.guard.check()
    assert second is not None
    assert second.rolled_back


async def test_a_rollback_never_undoes_a_rollout_an_operator_changed_after_the_verdict() -> None:
    """Compare-and-set: the guard judged v1; an operator set v2 while it judged; v2 stands and
    the verdict records that it was not rolled back, and why."""
    world = World(failures_to_rollback=1)
    await world.start()
    world.clock.advance(31)
    world.add(Track.DBOS, _S.FAILED, 10)
    read_figures = world.store.figures

    async def figures_then_operator(**kwargs: Any) -> Any:
        figures = await read_figures(**kwargs)
        await world.rollout.change(
            RolloutChange(rollout_percent=50), changed_by="alice", reason="stage 3"
        )
        return figures

    world.store.figures = figures_then_operator  # type: ignore[method-assign]
    verdict = await world.guard.check()
    assert verdict is not None
    assert (verdict.verdict, verdict.rolled_back) == (Verdict.FAIL, False)
    assert "not rolled back: the rollout changed to v2 (by alice) after v1" in verdict.reason
    assert verdict.figures["superseded_by"] == 2
    assert await world.percent() == 50
    assert [s.changed_by for s in await world.rollout.history()] == ["alice", "environment"]
    assert world.rerouted == 0


async def test_fallbacks_at_admission_count_as_dbos_failures() -> None:
    """Executions routed to DBOS that DBOS could not admit ran on Kafka (and completed there):
    the guard counts each as a failed DBOS sample."""
    world = World(failures_to_rollback=1)
    await world.start()
    world.clock.advance(31)
    world.add(Track.DBOS, _S.COMPLETED, 4)
    world.add(Track.KAFKA, _S.COMPLETED, 20)
    for _ in range(8):
        r = record(world.clock, Track.KAFKA, _S.COMPLETED, fallback_reason="DBOS schema behind")
        world.executions.records[r.id] = r
    verdict = await world.guard.check()
    assert verdict is not None
    assert verdict.figures["dbos"]["fallbacks"] == 8
    assert verdict.figures["kafka"]["finished"] == 20  # the fallbacks are not Kafka samples
    assert (verdict.verdict, verdict.rolled_back) == (Verdict.FAIL, True)
    assert "DBOS error rate 66.7%" in verdict.reason
    assert await world.percent() == 0


async def test_fallbacks_never_weigh_on_the_kafka_baseline() -> None:
    """A fallback that then failed (or was slow) on Kafka is the DBOS cohort's failure only:
    counted in the Kafka baseline too, it would raise Kafka's error rate and p99 along with
    DBOS's and hide the very outage the guard is there to catch."""
    world = World(failures_to_rollback=1, max_error_rate_delta=0.1)
    await world.start()
    world.clock.advance(31)
    world.add(Track.DBOS, _S.COMPLETED, 10)
    world.add(Track.KAFKA, _S.COMPLETED, 10)
    for _ in range(2):
        r = record(world.clock, Track.KAFKA, _S.FAILED, fallback_reason="DBOS client timeout")
        world.executions.records[r.id] = r
    slow = record(world.clock, Track.KAFKA, _S.COMPLETED, 50.0, fallback_reason="DBOS refused")
    world.executions.records[slow.id] = slow
    stuck = record(world.clock, Track.KAFKA, _S.QUEUED, 3600.0, fallback_reason="DBOS refused")
    world.executions.records[stuck.id] = stuck
    verdict = await world.guard.check()
    assert verdict is not None
    kafka, dbos = verdict.figures["kafka"], verdict.figures["dbos"]
    assert (kafka["finished"], kafka["failed"], kafka["error_rate"]) == (10, 0, 0.0)
    assert kafka["p99_s"] == pytest.approx(0.1)
    assert kafka["stuck"] == 0
    assert (dbos["finished"], dbos["fallbacks"]) == (10, 3)  # the stuck one predates the window
    # 3 of 13 DBOS samples failed against a clean Kafka baseline; with the fallbacks counted on
    # the Kafka side too, Kafka's rate (2 of 13) would be within 0.1 of it: a pass.
    assert (verdict.verdict, verdict.rolled_back) == (Verdict.FAIL, True)
    assert "DBOS error rate 23.1% vs Kafka 0.0%" in verdict.reason
