"""The answer of a stdio server in the shape of an HTTP upstream's (gateway/upstream/response.py), so the
Streamable HTTP relay (list filtering, keep-alives, events a reload posts) serves it unchanged.

A JSON answer is one body; an event stream turns each message routed to the exchange into one SSE `message` event
and ends when the exchange is done (its requests answered) or the gateway ends it. Between two messages the
server gets the route's `timeouts.idle`: past it, what is unanswered gets the gateway's timeout error and the
process is told to cancel it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.upstream.stdio.mux import Exchange, JsonObj


def sse_event(msg: JsonObj) -> bytes:
    return b"event: message\ndata: " + orjson.dumps(msg) + b"\n\n"


class _Bytes:
    """A body that is all here: one chunk, then the end."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def readany(self) -> bytes:
        data, self._data = self._data, b""
        return data

    async def __anext__(self) -> bytes:
        data = await self.readany()
        if not data:
            raise StopAsyncIteration
        return data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self


class _Events:
    """The exchange's messages as SSE events, as they come."""

    __slots__ = ("_deadline", "_ended", "_first", "_idle", "_on_idle", "_preamble", "exchange", "expired")

    def __init__(
        self,
        exchange: Exchange,
        first: JsonObj | None,
        idle: float | None,
        on_idle: Callable[[], list[JsonObj]],
        preamble: bytes = b"",
    ) -> None:
        # an event the stream starts with (a legacy stream's `endpoint`)
        self._preamble = preamble
        self.exchange = exchange
        self._first = first
        # None: no idle limit (a session's GET stream waits for the server as long as the client holds it)
        self._idle = idle
        self._on_idle = on_idle
        self._deadline = asyncio.get_running_loop().time() + idle if idle is not None else None
        self._ended = False
        # the server stayed silent past the idle timeout (what was unanswered got the gateway's error)
        self.expired = False

    def end(self) -> None:
        self._ended = True
        self.exchange.close()

    async def readany(self) -> bytes:
        if self._preamble:
            preamble, self._preamble = self._preamble, b""
            return preamble
        if self._first is not None:
            first, self._first = self._first, None
            return sse_event(first)
        if self._ended:
            return b""
        try:
            # the deadline is kept across calls: the relay's keep-alive timer may cancel this wait and call again
            async with asyncio.timeout_at(self._deadline):
                msg = await self.exchange.next()
        except TimeoutError:
            self._ended = True
            self.expired = True
            return b"".join(sse_event(m) for m in self._on_idle())
        if msg is None:
            self._ended = True
            return b""
        if self._idle is not None:
            self._deadline = asyncio.get_running_loop().time() + self._idle
        return sse_event(msg)

    async def __anext__(self) -> bytes:
        data = await self.readany()
        if not data:
            raise StopAsyncIteration
        return data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self


class StdioResponse:
    """An UpstreamResponse (gateway/upstream/response.py) made by the gateway for a stdio server."""

    __slots__ = ("_body", "_closed", "_headers", "_on_close", "_status", "on_end")

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        body: _Bytes | _Events,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._status = status
        self._headers = CIMultiDictProxy(CIMultiDict(headers))
        self._body = body
        self._on_close = on_close
        self._closed = False
        # called once when the answer is closed, with why it failed ("reset": the process exited mid-answer,
        # "timeout": silent past the idle timeout) or None; the forward step reports it to the breaker then
        self.on_end: Callable[[str | None], None] | None = None

    @classmethod
    def json(
        cls,
        status: int,
        msg: object | None,
        headers: dict[str, str] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> StdioResponse:
        body = orjson.dumps(msg) if msg is not None else b""
        hdrs = dict(headers or {})
        if msg is not None:
            hdrs["Content-Type"] = "application/json"
        hdrs["Content-Length"] = str(len(body))
        return cls(status, hdrs, _Bytes(body), on_close)

    @classmethod
    def events(
        cls,
        exchange: Exchange,
        first: JsonObj | None,
        idle: float | None,
        on_idle: Callable[[], list[JsonObj]],
        headers: dict[str, str] | None = None,
        on_close: Callable[[], None] | None = None,
        preamble: bytes = b"",
    ) -> StdioResponse:
        hdrs = {**(headers or {}), "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        return cls(200, hdrs, _Events(exchange, first, idle, on_idle, preamble), on_close)

    @property
    def status(self) -> int:
        return self._status

    @property
    def reason(self) -> str:
        return {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 409: "Conflict"}.get(self._status, "")

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._headers

    @property
    def content_length(self) -> int | None:
        value = self._headers.get("Content-Length")
        return int(value) if value is not None else None

    @property
    def content(self) -> _Bytes | _Events:
        return self._body

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if isinstance(self._body, _Events):
            self._body.end()
        if self._on_close is not None:
            self._on_close()
        if self.on_end is not None:
            body = self._body
            expired = isinstance(body, _Events) and body.expired
            failure = body.exchange.failure if isinstance(body, _Events) else None
            self.on_end("reset" if failure is not None else "timeout" if expired else None)

    def end(self) -> None:
        if isinstance(self._body, _Events):
            self._body.end()
