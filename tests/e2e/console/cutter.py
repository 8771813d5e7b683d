"""A TCP relay in front of the API whose open connections a test can cut at once: what a flaky
network or a restarted load balancer does to a browser's live event stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Cutter:
    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._open: set[asyncio.StreamWriter] = set()
        self.accepted = 0
        self.port = 0  # known once the server listens

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def _relay(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self._upstream)
        self._open |= {down_w, up_w}
        try:
            await asyncio.gather(self._pipe(down_r, up_w), self._pipe(up_r, down_w))
        finally:
            self._open -= {down_w, up_w}

    def cut(self) -> int:
        """Reset every connection open now (both sides); the relay keeps accepting new ones."""
        cut = list(self._open)
        for writer in cut:
            writer.transport.abort()
        return len(cut) // 2


@contextlib.asynccontextmanager
async def cutter(upstream_port: int) -> AsyncIterator[Cutter]:
    relay = Cutter(upstream_port)
    server = await asyncio.start_server(relay._relay, "127.0.0.1", 0)
    relay.port = server.sockets[0].getsockname()[1]
    try:
        yield relay
    finally:
        relay.cut()
        server.close()
        await server.wait_closed()
