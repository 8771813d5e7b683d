"""Sign in with an API key (a session cookie in exchange), sign out."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from twintrack.entrypoints.api.auth import ApiKeyAuthenticator
from twintrack.entrypoints.console.session import COOKIE, CurrentViewer, sessions_of
from twintrack.entrypoints.console.web import ConsoleRoute, page

router = APIRouter(prefix="/ui", route_class=ConsoleRoute, include_in_schema=False)


def _local(target: str | None) -> str:
    """Only paths of the console itself: `next` must not send a signed-in user elsewhere."""
    if not target or not target.startswith("/ui") or urlsplit(target).netloc:
        return "/ui/executions"
    return target


def _same_origin(request: Request) -> bool:
    """A sign-in posted by another site's page (login CSRF) carries its Origin."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.url.netloc


@router.get("")
async def home() -> Response:
    return RedirectResponse("/ui/executions", status_code=303)


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    return page(request, "login.html", None, next=_local(next), error=None)


@router.post("/login")
async def login(
    request: Request, key: Annotated[str, Form()], next: Annotated[str, Form()] = ""
) -> Response:
    authenticator: ApiKeyAuthenticator = request.app.state.authenticator
    principal = await authenticator.principal_of(key.strip()) if _same_origin(request) else None
    if principal is None:
        error = "That API key is unknown or revoked."
        return page(request, "login.html", None, 401, next=_local(next), error=error)
    sessions = sessions_of(request)
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(
        COOKIE,
        sessions.issue(key.strip()),
        max_age=int(sessions.ttl_s),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
    )
    return response


@router.post("/logout")
async def logout(viewer: CurrentViewer) -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response
