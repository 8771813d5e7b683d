"""Limits the API enforces itself: request body size, and open SSE streams per key.

`BodyLimit` refuses request bodies over the limit (1 MiB, the flow size cap) with a 413 envelope.

The body is read up front, up to the limit, before any route runs: a declared `Content-Length`
over the limit is refused without reading, and a body that turns out longer than declared (or
is chunked) is refused as soon as it crosses the limit. Routes then see an ordinary, bounded
body, however FastAPI parses it. Only methods that carry bodies are touched, so a streaming GET
(SSE) keeps its `receive` channel for disconnect notices.

`StreamSlots` counts the SSE streams open with each API key in this process; the stream over
`MAX_SSE_STREAMS_PER_KEY` is refused with 429 before it opens, and a stream's slot is freed when
it ends, whether the server ended it (terminal event) or the client went away.
"""

from __future__ import annotations

import hashlib

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twintrack.domain.limits import check_streams
from twintrack.entrypoints.api.errors import error_response

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, int(declared))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone: nobody to answer
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, None)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: int | None) -> None:
        told = f"{size} bytes" if size is not None else "more than that"
        response = error_response(
            413,
            "payload_too_large",
            f"request body is {told}; the limit is {self.max_bytes} bytes",
            {"limit_bytes": self.max_bytes},
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands out the buffered body once, then the client's own messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class StreamSlot:
    """One open stream's hold on its key's count; releasing twice is harmless."""

    def __init__(self, slots: StreamSlots, key: bytes) -> None:
        self._slots = slots
        self._key = key
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._release(self._key)


class StreamSlots:
    """Open SSE streams per API key (keys are kept as SHA-256 digests, never in the clear)."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._open: dict[bytes, int] = {}

    def acquire(self, api_key: str) -> StreamSlot:
        """A slot for one more stream, or LimitExceeded (429) naming MAX_SSE_STREAMS_PER_KEY."""
        digest = hashlib.sha256(api_key.encode()).digest()
        check_streams(self._open.get(digest, 0), self.per_key)
        self._open[digest] = self._open.get(digest, 0) + 1
        return StreamSlot(self, digest)

    def open_streams(self, api_key: str) -> int:
        return self._open.get(hashlib.sha256(api_key.encode()).digest(), 0)

    def _release(self, digest: bytes) -> None:
        left = self._open.get(digest, 0) - 1
        if left > 0:
            self._open[digest] = left
        else:
            self._open.pop(digest, None)
