"""`/v1/admin/...`: the live rollout (read, change), the shadow mismatch ledger and the rollout
scorecard (admin keys only).

A change is recorded in the rollout history under the key's owner, with the reason the request
gives; this process applies it at once, every other API process within ROLLOUT_REFRESH_S (on
its LISTEN/NOTIFY feed, usually milliseconds).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from twintrack.core.live_rollout import InvalidRolloutChange, RolloutChange, set_rollout
from twintrack.core.rollout import rollout_overview
from twintrack.core.scorecard import parse_window, scorecard
from twintrack.domain.execution import EventsBackend
from twintrack.entrypoints.api.auth import Caller, forbidden
from twintrack.entrypoints.api.errors import COMMON_RESPONSES, ApiError, ErrorResponse, issue
from twintrack.entrypoints.api.schemas import ScorecardOut, ShadowMismatches

_FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "the key is not an admin key"}
}
router = APIRouter(prefix="/v1/admin", tags=["admin"], responses={**COMMON_RESPONSES, **_FORBIDDEN})


class RolloutUpdate(BaseModel):
    """Fields left out stay as they are; `rollout_percent: null` clears the cohort."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000)
    enable_dbos: bool | None = None
    rollout_percent: int | None = Field(default=None, ge=0, le=100)
    events_backend: EventsBackend | None = None
    shadow_percent: int | None = Field(default=None, ge=0, le=100)


def _admin(caller: Any) -> None:
    if not caller.is_admin:
        raise forbidden("authorization", "only an admin API key may read or change the rollout")


@router.get("/rollout")
async def get_rollout(request: Request, caller: Caller) -> dict[str, Any]:
    """The state in force, its history, and per track the phase and drain state."""
    _admin(caller)
    container = request.app.state.container
    overview = await rollout_overview(container.rollout_store, container.reroutes)
    return overview.to_json()


@router.put("/rollout")
async def put_rollout(request: Request, caller: Caller, body: RolloutUpdate) -> dict[str, Any]:
    """Change the live rollout; answers the new state."""
    _admin(caller)
    container = request.app.state.container
    fields = body.model_dump(exclude_unset=True)
    change = RolloutChange(
        enable_dbos=body.enable_dbos,
        events_backend=body.events_backend,
        shadow_percent=body.shadow_percent,
        **({"rollout_percent": body.rollout_percent} if "rollout_percent" in fields else {}),
    )
    try:
        state = await set_rollout(
            container.rollout_store, change, changed_by=caller.owner_id, reason=body.reason
        )
    except InvalidRolloutChange as exc:
        raise ApiError(422, "invalid_request", str(exc), [issue("body", str(exc))]) from None
    live = getattr(container, "rollout", None)
    if live is not None:
        live.apply(state)
    return state.to_json()


@router.get("/shadow/mismatches")
async def get_shadow_mismatches(
    request: Request, caller: Caller, limit: int = Query(default=20, ge=1, le=1000)
) -> ShadowMismatches:
    """The mismatch ledger, newest first: shadow runs that differed from their original."""
    _admin(caller)
    found = await request.app.state.container.shadow_store.mismatches(limit)
    return ShadowMismatches.model_validate({"mismatches": [m.to_json() for m in found]})


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
