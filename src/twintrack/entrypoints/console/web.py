"""What every console page shares: the templates, the route class that turns errors into
pages, and the two answers a page can give besides HTML (redirect, not found).

Errors are rendered here rather than by the API's JSON handlers: a browser should see a page
that says "not found" (another owner's id looks exactly like a missing one, as in the API),
and a fragment request (htmx) with an expired session should be sent to the sign-in page.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from twintrack.core.errors import InvalidCursor, NotFound
from twintrack.core.service import Conflict, TrackUnavailable
from twintrack.domain.limits import LimitExceeded
from twintrack.entrypoints.console.session import CsrfRejected, NotSignedIn, Viewer

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def _ago(value: datetime | None) -> str:
    if value is None:
        return "-"
    seconds = (datetime.now(UTC) - value).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


templates.env.filters["ago"] = _ago
templates.env.filters["ms"] = _ms
templates.env.filters["age"] = _age


def page(
    request: Request, name: str, viewer: Viewer | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """Render a template; `viewer` gives the nav its owner and the forms their CSRF token."""
    return templates.TemplateResponse(
        request, name, {"viewer": viewer, **context}, status_code=status_code
    )


def is_fragment(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _sign_in(request: Request) -> Response:
    target = "/ui/login?next=" + quote(request.url.path, safe="/")
    if is_fragment(request):
        return Response(status_code=401, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def _error(request: Request, status_code: int, title: str, message: str) -> Response:
    if is_fragment(request):
        # The page stays as it is; the message lands in its #flash slot (out of band).
        flash = page(request, "_flash.html", None, status_code, level="error", message=message)
        flash.headers["HX-Reswap"] = "none"
        return flash
    return page(request, "error.html", None, status_code, title=title, message=message)


class ConsoleRoute(APIRoute):
    """A route whose errors become pages (or flash fragments), never the API's JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except NotSignedIn:
                return _sign_in(request)
            except CsrfRejected:
                return _error(request, 403, "Refused", "The form is stale: reload the page.")
            except NotFound:
                return _error(request, 404, "Not found", "Not found.")
            except InvalidCursor:
                return _error(request, 400, "Bad page", "That page link is not valid.")
            except Conflict as exc:
                return _error(request, 409, "Conflict", str(exc))
            except LimitExceeded as exc:
                return _error(request, 429, "Limit reached", str(exc))
            except TrackUnavailable as exc:
                return _error(request, 503, "Unavailable", str(exc))

        return handle
