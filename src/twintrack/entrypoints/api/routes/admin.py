"""`/v1/admin/...` (admin keys only): the live rollout (read, change), the shadow mismatch
ledger, the rollout scorecard, and bulk actions by filter.

A rollout change is recorded in the rollout history under the key's owner, with the reason the
request gives; this process applies it at once, every other API process within
ROLLOUT_REFRESH_S (on its LISTEN/NOTIFY feed, usually milliseconds).

Bulk stop and reroute act across owners (an operator's cleanup; `filter.owner` narrows it to
one): a dry run by default, at most once per execution under an operation id (core/bulk.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from twintrack.core.bulk import (
    BulkActions,
    BulkResult,
    ExecutionFilter,
    InvalidBulkRequest,
    OperationIdReused,
)
from twintrack.core.live_rollout import (
    InvalidRolloutChange,
    RolloutChange,
    RolloutSuperseded,
    set_rollout,
)
from twintrack.core.rollout import rollout_overview
from twintrack.core.scorecard import parse_window, scorecard
from twintrack.entrypoints.api.admin_schemas import (
    BulkRerouteRequest,
    BulkResultOut,
    BulkStopRequest,
    ExecutionFilterIn,
    RolloutOverviewOut,
    RolloutStateOut,
    RolloutUpdate,
)
from twintrack.entrypoints.api.auth import Caller, forbidden
from twintrack.entrypoints.api.errors import COMMON_RESPONSES, ApiError, ErrorResponse, issue
from twintrack.entrypoints.api.schemas import ScorecardOut, ShadowMismatchesOut

_FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "the key is not an admin key"}
}
_INVALID: dict[int | str, dict[str, Any]] = {
    422: {
        "model": ErrorResponse,
        "description": "Invalid body; or `operation_id_reused`: the operation id came first with "
        "another request",
    }
}
router = APIRouter(prefix="/v1/admin", tags=["admin"], responses={**COMMON_RESPONSES, **_FORBIDDEN})


def _admin(caller: Any) -> None:
    if not caller.is_admin:
        raise forbidden("authorization", "only an admin API key may use the admin routes")


@router.get("/rollout", response_model=RolloutOverviewOut)
async def get_rollout(request: Request, caller: Caller) -> RolloutOverviewOut:
    """The state in force, its history, and per track the phase and drain state."""
    _admin(caller)
    container = request.app.state.container
    overview = await rollout_overview(container.rollout_store, container.reroutes)
    return RolloutOverviewOut.model_validate(overview.to_json())


_SUPERSEDED: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "`expected_version` is no longer in force"}
}


@router.put("/rollout", response_model=RolloutStateOut, responses=_SUPERSEDED)
async def put_rollout(request: Request, caller: Caller, body: RolloutUpdate) -> RolloutStateOut:
    """Change the live rollout; answers the new state."""
    _admin(caller)
    container = request.app.state.container
    fields: dict[str, Any] = {}
    if "rollout_percent" in body.model_fields_set:  # null clears the cohort; absent keeps it
        fields["rollout_percent"] = body.rollout_percent
    change = RolloutChange(
        enable_dbos=body.enable_dbos,
        events_backend=body.events_backend,
        shadow_percent=body.shadow_percent,
        fallback_to_kafka=body.fallback_to_kafka,
        **fields,
    )
    try:
        state = await set_rollout(
            container.rollout_store,
            change,
            changed_by=caller.owner_id,
            reason=body.reason,
            expected_version=body.expected_version,
        )
    except InvalidRolloutChange as exc:
        raise ApiError(422, "invalid_request", str(exc), [issue("body", str(exc))]) from None
    except RolloutSuperseded as exc:
        raise ApiError(409, "conflict", str(exc), [issue("expected_version", str(exc))]) from None
    live = getattr(container, "rollout", None)
    if live is not None:
        live.apply(state)
    return RolloutStateOut.model_validate(state.to_json())


@router.get("/shadow/mismatches")
async def get_shadow_mismatches(
    request: Request, caller: Caller, limit: int = Query(default=20, ge=1, le=1000)
) -> ShadowMismatchesOut:
    """The mismatch ledger, newest first: shadow runs that differed from their original."""
    _admin(caller)
    found = await request.app.state.container.shadow_store.mismatches(limit)
    return ShadowMismatchesOut.model_validate({"mismatches": [m.to_json() for m in found]})


@router.get("/rollout/report")
async def get_rollout_report(
    request: Request,
    caller: Caller,
    window: str = Query(default="1h", description="e.g. 90s, 30m, 1h, 2d", max_length=32),
) -> ScorecardOut:
    """The scorecard per track and cohort over the window."""
    _admin(caller)
    try:
        window_s = parse_window(window)
    except ValueError as exc:
        raise ApiError(
            422, "invalid_request", str(exc), [issue("query.window", str(exc))]
        ) from None
    card = await scorecard(request.app.state.container.scorecard_store, window_s)
    return ScorecardOut.model_validate(card.to_json())


def _filter(body: ExecutionFilterIn) -> ExecutionFilter:
    return ExecutionFilter(
        track=body.track,
        statuses=tuple(body.status or ()),
        flow_id=body.flow_id,
        owner_id=body.owner,
        created_before=body.created_before,
        created_after=body.created_after,
    )


async def _answer(result: Any) -> BulkResultOut:
    try:
        outcome: BulkResult = await result
    except InvalidBulkRequest as exc:
        raise ApiError(422, "invalid_request", str(exc), [issue("filter", str(exc))]) from None
    except OperationIdReused as exc:
        raise ApiError(
            422, "operation_id_reused", str(exc), [issue("operation_id", str(exc))]
        ) from None
    return BulkResultOut.model_validate(outcome.to_json())


@router.post("/executions/stop", response_model=BulkResultOut, responses=_INVALID)
async def bulk_stop_executions(
    request: Request, caller: Caller, body: BulkStopRequest
) -> BulkResultOut:
    """Stop every unfinished execution the filter selects (each with its tree), any owner's;
    a dry run unless `dry_run: false`. Answers the outcome per execution id."""
    _admin(caller)
    bulk: BulkActions = request.app.state.container.bulk
    return await _answer(
        bulk.stop(
            _filter(body.filter),
            reason=body.reason,
            requested_by=caller.owner_id,
            dry_run=body.dry_run,
            operation_id=body.operation_id,
        )
    )


@router.post("/executions/reroute", response_model=BulkResultOut, responses=_INVALID)
async def bulk_reroute_executions(
    request: Request, caller: Caller, body: BulkRerouteRequest
) -> BulkResultOut:
    """Move every unstarted (created, queued) execution the filter selects from the other
    track to `to`, any owner's, each atomically (as `twintrack rollout reroute`); a dry run
    unless `dry_run: false`. Answers the outcome per execution id."""
    _admin(caller)
    bulk: BulkActions = request.app.state.container.bulk
    return await _answer(
        bulk.reroute(
            _filter(body.filter),
            to=body.to,
            requested_by=caller.owner_id,
            include_dbos_streams=body.include_dbos_streams,
            dry_run=body.dry_run,
            operation_id=body.operation_id,
        )
    )
