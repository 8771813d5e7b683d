"""Rollout: the migration control plane on one page — the state in force and its history, the
guard's verdicts, the scorecard per track and cohort, the shadow mismatch ledger, and a form to
change the rollout percent or shadow percent with a reason.

Everything is read through the very stores and core functions `/v1/admin/...` and `twintrack
rollout` use, and a change goes through `set_rollout` under the key's owner and is applied to
this process's LiveRollout at once, exactly as `PUT /v1/admin/rollout` does, so the page, the
API and the CLI cannot disagree. The form carries the version it was rendered from: a change
made by someone else meanwhile is refused (409), not silently overwritten. Admin keys only
(another key gets 403, as compare's run does): who changed the rollout and why is for operators.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import RedirectResponse

from twintrack.core.live_rollout import (
    InvalidRolloutChange,
    RolloutChange,
    RolloutSuperseded,
    set_rollout,
)
from twintrack.core.rollout import rollout_overview
from twintrack.core.scorecard import parse_window, scorecard
from twintrack.entrypoints.console.session import CurrentViewer, Viewer
from twintrack.entrypoints.console.web import ConsoleRoute, page

router = APIRouter(prefix="/ui/rollout", route_class=ConsoleRoute, include_in_schema=False)

WINDOWS = ("15m", "1h", "6h")
DEFAULT_WINDOW = "1h"
HISTORY = 20
VERDICTS = 10
MISMATCHES = 10
NOT_ADMIN = "The rollout page needs an admin key: it shows and changes the live rollout."


def _refused(request: Request, viewer: Viewer) -> Response:
    return page(request, "error.html", viewer, 403, title="Refused", message=NOT_ADMIN)


async def _render(
    request: Request,
    viewer: Viewer,
    window: str,
    status_code: int = 200,
    *,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    container = request.app.state.container
    overview = await rollout_overview(
        container.rollout_store, container.reroutes, history=HISTORY, include_finished=False
    )
    card = await scorecard(container.scorecard_store, parse_window(window))
    return page(
        request,
        "rollout.html",
        viewer,
        status_code,
        state=overview.state,
        history=overview.history,
        phases=overview.phases,
        drain=overview.tracks.tracks,
        verdicts=await container.guard_store.recent(VERDICTS),
        card=card,
        window=window,
        windows=WINDOWS,
        mismatches=await container.shadow_store.mismatches(MISMATCHES),
        error=error,
        form=form or {},
        changed=request.query_params.get("changed"),
    )


@router.get("")
async def rollout_page(
    request: Request, viewer: CurrentViewer, window: Annotated[str, Query()] = DEFAULT_WINDOW
) -> Response:
    if not viewer.is_admin:
        return _refused(request, viewer)
    return await _render(request, viewer, chosen_window(window))


def chosen_window(text: str) -> str:
    """One of the offered windows (a hand-edited link gets the default, not an error page)."""
    return text if text in WINDOWS else DEFAULT_WINDOW


def form_percent(name: str, text: str) -> int | None:
    """An optional 0-100 field: empty keeps the value in force."""
    text = text.strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise InvalidRolloutChange(f"{name} must be a whole number 0-100, got {text!r}") from None
    if not 0 <= value <= 100:
        raise InvalidRolloutChange(f"{name} must be 0-100, got {value}")
    return value


@router.post("")
async def rollout_change(
    request: Request,
    viewer: CurrentViewer,
    reason: Annotated[str, Form()] = "",
    rollout_percent: Annotated[str, Form()] = "",
    shadow_percent: Annotated[str, Form()] = "",
    expected_version: Annotated[int | None, Form()] = None,
    window: Annotated[str, Form()] = DEFAULT_WINDOW,
) -> Response:
    if not viewer.is_admin:
        return _refused(request, viewer)
    container = request.app.state.container
    window = chosen_window(window)
    entered = {"reason": reason, "rollout_percent": rollout_percent, "shadow": shadow_percent}
    try:
        fields: dict[str, Any] = {}
        percent = form_percent("the rollout percent", rollout_percent)
        if percent is not None:
            fields["rollout_percent"] = percent
        change = RolloutChange(
            shadow_percent=form_percent("the shadow percent", shadow_percent), **fields
        )
        state = await set_rollout(
            container.rollout_store,
            change,
            changed_by=viewer.owner_id,
            reason=reason,
            expected_version=expected_version,
        )
    except InvalidRolloutChange as exc:
        return await _render(request, viewer, window, 422, error=str(exc), form=entered)
    except RolloutSuperseded as exc:
        return await _render(request, viewer, window, 409, error=str(exc), form=entered)
    live = getattr(container, "rollout", None)
    if live is not None:
        live.apply(state)
    # Post/redirect/get: a reload shows the page, it does not repeat the change.
    return RedirectResponse(f"/ui/rollout?window={window}&changed={state.version}", status_code=303)
