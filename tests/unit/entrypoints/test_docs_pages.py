"""`/docs` and `/redoc` work air-gapped: every script, stylesheet and icon they reference is
served by the app itself, and nothing in them names another host.

The rendering itself (Swagger UI listing the operations with other hosts unreachable) is
checked in Chromium by tests/e2e/console/test_docs_pages.py.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest

from twintrack.bootstrap import in_memory
from twintrack.entrypoints.api import create_app

URL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""")


class _Assets(HTMLParser):
    """The `src` and `href` of every element, and the `spec-url` ReDoc reads."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [v for k, v in attrs if k in ("src", "href", "spec-url") and v]


def _referenced(html: str) -> list[str]:
    parser = _Assets()
    parser.feed(html)
    # Swagger UI's bootstrap script names the document as `url: '/openapi.json'`.
    return parser.found + re.findall(r"url: '([^']+)'", html)


@pytest.fixture
async def http() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(in_memory()))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_the_page_references_only_this_app(http: httpx.AsyncClient, path: str) -> None:
    page = await http.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert URL.findall(page.text) == []  # no http(s):// or protocol-relative URL at all
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = _referenced(page.text)
    assert len(assets) >= (4 if path == "/docs" else 3), assets  # js, css/icon, the document
    for asset in assets:
        assert asset.startswith("/"), asset
        answer = await http.get(asset)
        assert answer.status_code == 200, asset
        assert answer.content, asset


async def test_the_document_the_pages_read_is_the_apps(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    assert "/v1/executions" in document["paths"]
    assert not any(p.startswith(("/docs", "/redoc", "/ui")) for p in document["paths"])
