"""`/docs` (Swagger UI) and `/redoc` from files vendored in `static/`, never a CDN.

Operators run air-gapped: FastAPI's default pages load their scripts from cdn.jsdelivr.net and a
favicon from fastapi.tiangolo.com, so they would render blank. The pages also carry a
Content-Security-Policy that lets the browser fetch from this origin only (ReDoc's sidebar logo
is an image on cdn.redoc.ly: refused rather than tried; it hides itself when it cannot load).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
PREFIX = "/docs/static"
# The pages' own bootstrap is an inline script; ReDoc's styles are inline and its search runs
# in a worker made from a blob URL.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


def _local(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CSP
    return page


def install_docs(app: FastAPI) -> None:
    """Serve the two documentation pages and their assets; `app` must have been made with
    `docs_url=None, redoc_url=None` (FastAPI's own pages point at the CDN)."""
    app.mount(PREFIX, StaticFiles(directory=STATIC), name="docs-static")
    favicon = f"{PREFIX}/favicon-32x32.png"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _local(
            get_swagger_ui_html(
                openapi_url=str(app.openapi_url),
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
                swagger_css_url=f"{PREFIX}/swagger-ui.css",
                swagger_favicon_url=favicon,
                oauth2_redirect_url=None,  # no OAuth: API keys are bearer tokens
                # Swagger UI would send the document to validator.swagger.io for a badge.
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _local(
            get_redoc_html(
                openapi_url=str(app.openapi_url),
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{PREFIX}/redoc.standalone.js",
                redoc_favicon_url=favicon,
                with_google_fonts=False,
            )
        )
