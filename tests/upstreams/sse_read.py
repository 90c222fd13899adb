"""Test-side helpers: read SSE events from a raw aiohttp response (for what the SDK client hides)."""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.upstream.sse import SseEvent, SseParser


class EventReader:
    """Events of one streaming response, in order, with a bounded wait for each."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self._parser = SseParser()
        self._queue: list[SseEvent] = []
        self.raw = bytearray()

    async def next(self, timeout: float = 10.0) -> SseEvent:
        async with asyncio.timeout(timeout):
            while not self._queue:
                chunk = await self._resp.content.readany()
                if not chunk:
                    raise EOFError("stream ended")
                self.raw += chunk
                self._queue.extend(self._parser.feed(chunk))
        return self._queue.pop(0)

    async def next_message(self, timeout: float = 10.0) -> SseEvent:
        """The next event carrying data (skips comments-only events and other event types)."""
        async with asyncio.timeout(timeout):
            while True:
                ev = await self.next(timeout)
                if ev.is_message and ev.data:
                    return ev
