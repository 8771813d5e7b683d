"""Shadow runs on the memory adapters (core/shadow.py): the sweep samples completed executions,
shadows them on the other track with side effects off and hidden from the owner, sheds them
under load, compares once the shadow ends, and keeps a capped mismatch ledger."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from tests.unit.core.support import OWNER, app_with, flow, new_flow, started
from tests.unit.core.test_run_host import Failures, run
from twintrack.bootstrap import MemoryContainer, shadow_sweep
from twintrack.core.errors import NotFound
from twintrack.core.guard import CohortFigures, GuardPolicy, Verdict, judge
from twintrack.core.live_rollout import RolloutChange
from twintrack.core.shadow import MATCHED, MISMATCHED, SHED_BUSY, SHED_LIMIT, ShadowOutcomes
from twintrack.domain.execution import ExecutionStatus, Track
from twintrack.domain.shadow import shadow_execution_id
from twintrack.nodes.base import NodeConfig, NodeContext, NodeType

TALLY = flow(
    [
        ("x", "const", {"value": 1}),
        ("count", "tally", {"name": "runs"}),
        ("out", "output", {"name": "count"}),
    ],
    [("x.value", "count.value"), ("count.count", "out.value")],
)


class TrackConfig(NodeConfig):
    pass


class SaysItsTrack(NodeType):
    """Declares no side effects, and answers differently per track: a real divergence."""

    type_name = "says_its_track"
    config_model = TrackConfig
    side_effects = False
    outputs = ("value",)
    app: ClassVar[MemoryContainer]

    async def run(
        self, ctx: NodeContext, config: NodeConfig, inputs: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        return {"value": (await self.app.executions.get(ctx.execution_id)).track.value}


DIVERGES = flow(
    [("t", "says_its_track", {}), ("out", "output", {"name": "track"})],
    [("t.value", "out.value")],
)


def shadowing(**overrides: Any) -> MemoryContainer:
    app = app_with(**overrides)
    SaysItsTrack.app = app
    app.registry.register(SaysItsTrack())
    return app


async def completed(app: MemoryContainer, flow_id: str) -> str:
    host = app.run_host("w-1", failures=Failures())
    ex = (await started(app, flow_id)).id
    assert (await run(app, host, ex)).status is ExecutionStatus.COMPLETED
    return ex


async def set_percent(app: MemoryContainer, percent: int) -> None:
    await app.rollout.start()
    await app.rollout_store.change(
        RolloutChange(shadow_percent=percent), changed_by="test", reason="shadow"
    )


async def run_shadow(app: MemoryContainer, original_id: str) -> Any:
    host = app.run_host("w-2", failures=Failures())
    return await run(app, host, shadow_execution_id(original_id))


async def test_a_sampled_execution_is_shadowed_on_the_other_track_without_side_effects() -> None:
    app = shadowing()
    ex = await completed(app, await new_flow(app, TALLY))
    sweep = shadow_sweep(app.settings, app)
    assert (await sweep.sweep()).scheduled == 0  # SHADOW_PERCENT defaults to 0
    await set_percent(app, 100)
    assert (await sweep.sweep()).scheduled == 1
    assert (await sweep.sweep()).scheduled == 0  # at most once per execution

    shadow = await app.executions.get(shadow_execution_id(ex))
    assert (shadow.shadow_of, shadow.track, shadow.owner_id) == (ex, Track.DBOS, OWNER)
    # Invisible to its owner: not listed, not readable, no stream.
    assert [r.id for r in (await app.service.list(OWNER)).items] == [ex]
    with pytest.raises(NotFound):
        await app.service.get(OWNER, shadow.id)
    with pytest.raises(NotFound):
        await app.service.subscribe(OWNER, shadow.id)

    ended = await run_shadow(app, ex)
    assert (ended.status, ended.outputs) == (ExecutionStatus.COMPLETED, {"count": 1})
    assert await app.stores.counters.get("runs") == 1  # the tally counted once, not twice
    outcome = await sweep.sweep()
    assert (outcome.compared, outcome.mismatched) == (1, 0)
    run_row = app.shadow_store.runs[ex]
    assert run_row.status == MATCHED
    assert run_row.replayed == {
        "count": "'tally' has side effects: not run, the original's result replayed"
    }
    assert await app.shadow_store.mismatches() == []


async def test_a_divergent_shadow_lands_in_a_capped_ledger() -> None:
    app = shadowing(shadow_ledger_size=2, shadow_max_running=10)
    flow_id = await new_flow(app, DIVERGES)
    originals = [await completed(app, flow_id) for _ in range(3)]
    await set_percent(app, 100)
    sweep = shadow_sweep(app.settings, app)
    assert (await sweep.sweep()).scheduled == 3
    for ex in originals:
        await run_shadow(app, ex)
    assert (await sweep.sweep()).mismatched == 3
    ledger = await app.shadow_store.mismatches(10)
    assert [m.original_id for m in ledger] == list(reversed(originals))[:2]  # newest two
    newest = ledger[0]
    assert (newest.original_track, newest.shadow_track) == (Track.KAFKA, Track.DBOS)
    assert newest.shadow_id == shadow_execution_id(newest.original_id)
    assert newest.flow_version == 1
    assert '"kafka"' in newest.diff
    assert '"dbos"' in newest.diff
    assert newest.original_events[0].split()[1] == "execution.created"
    assert all(app.shadow_store.runs[ex].status == MISMATCHED for ex in originals)
    assert await app.shadow_store.outcomes(60) == ShadowOutcomes(3, 3)


async def test_shadows_are_shed_first_at_their_limit_and_when_the_track_is_busy() -> None:
    app = shadowing(shadow_max_running=1)
    flow_id = await new_flow(app, TALLY)
    for _ in range(2):
        await completed(app, flow_id)
    await set_percent(app, 100)
    outcome = await shadow_sweep(app.settings, app).sweep()
    assert (outcome.scheduled, outcome.skipped) == (1, {SHED_LIMIT: 1})

    busy = shadowing(shadow_shed_queued=0)
    flow_id = await new_flow(busy, TALLY)
    await completed(busy, flow_id)
    await busy.service.start(
        OWNER, (await busy.service.create(OWNER, flow_id, track=Track.DBOS)).id
    )
    await set_percent(busy, 100)
    outcome = await shadow_sweep(busy.settings, busy).sweep()
    assert (outcome.scheduled, outcome.skipped) == (0, {SHED_BUSY: 1})


def test_the_guard_fails_the_dbos_cohort_on_shadow_mismatches() -> None:
    fine = CohortFigures(Track.DBOS, 50, 0, 0.1, 0)
    kafka = CohortFigures(Track.KAFKA, 50, 0, 0.1, 0)
    policy = GuardPolicy(min_samples=20, max_mismatch_rate=0.1, min_shadow_samples=5)
    assert judge(fine, kafka, policy, ShadowOutcomes(10, 1))[0] is Verdict.PASS
    assert judge(fine, kafka, policy, ShadowOutcomes(4, 4))[0] is Verdict.PASS  # too few
    verdict, reason = judge(fine, kafka, policy, ShadowOutcomes(10, 2))
    assert verdict is Verdict.FAIL
    assert "GUARD_MAX_MISMATCH_RATE" in reason
