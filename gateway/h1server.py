"""A lean HTTP/1.1 server for the gateway's hot route, in front of aiohttp's server on the same listener.

Why: with the lean upstream client in place, aiohttp's server machinery (request and response objects, the URL
dispatcher, middlewares, the payload writer) was the largest share of the gateway's CPU per request that a proxy
does not need (issue #9). Almost all MCP traffic is one shape: `POST /mcp/{server}` over HTTP/1.1 with a small
`Content-Length` body. This server parses that shape with httptools (C), hands the Streamable HTTP handler a
`FastRequest` with the few attributes it reads, and writes the answer's head and body in one system call.

Everything else goes to aiohttp, untouched: any other method or path, WebSocket upgrades, chunked or oversized
bodies, `Expect`, HTTP/1.0, query strings, percent-encoded names, a route whose transport is not Streamable HTTP,
a head the parser refuses or one over the size limits. The connection is handed over at a request boundary with
the bytes received so far (`transport.set_protocol`), and stays with aiohttp from then on, so both servers never
share a connection. `http.fast_path: false` turns this server off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import httptools
import structlog
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.tcp_helpers import tcp_nodelay
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import GatewayError, render_error

log = structlog.get_logger("gateway.h1server")

# Head limits: a head beyond them is handed to aiohttp, whose own limits (and error answers) then apply.
MAX_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 100
# aiohttp's default: both servers close an idle keep-alive connection after the same time
KEEPALIVE_SECONDS = 3630.0
# how often idle connections are looked for (cheaper than a timer per request)
SWEEP_SECONDS = 15.0
# unread bytes buffered behind a request in flight (pipelining) before the socket stops being read
READ_HIGH_WATER = 256 * 1024

_PREFIX = b"POST /mcp/"
_SUFFIX = b" HTTP/1.1"
# bytes that send a route name to aiohttp's dispatcher (a sub-path, a query, an escape, a fragment)
_NOT_A_NAME = (b"/", b"?", b"%", b"#", b" ")

Handler = Callable[[Any], Awaitable[web.StreamResponse]]
# which transport a route name uses under the policy in force (None: no such server)
RouteTransport = Callable[[str], str | None]


class FastBody:
    """The request body, already complete: `readany()` gives it once, then b"" (the end), like aiohttp's reader."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def readany(self) -> bytes:
        data, self._data = self._data, b""
        return data


class FastRequest:
    """The subset of aiohttp's `BaseRequest` the Streamable HTTP handler and the chain read."""

    __slots__ = (
        "_conn",
        "content",
        "content_length",
        "headers",
        "match_info",
        "method",
        "path",
        "remote",
        "task",
    )
    scheme = "http"  # the lean server never runs behind TLS (serve() only uses it on a plain TCP listener)

    def __init__(
        self,
        conn: FastProtocol,
        name: str,
        headers: CIMultiDictProxy[str],
        body: bytes,
    ) -> None:
        self._conn = conn
        self.method = "POST"
        self.path = "/mcp/" + name
        self.match_info = {"server": name}
        self.headers = headers
        self.content_length = len(body)
        self.content = FastBody(body)
        self.remote = conn.remote
        self.task: asyncio.Task[None] | None = None

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._conn.transport

    def new_response(self, status: int, reason: str | None, headers: Mapping[str, str]) -> FastResponse:
        return FastResponse(self._conn, status=status, reason=reason, headers=headers)


# what a transport handler may be given: aiohttp's request, or the lean server's
AnyRequest = web.BaseRequest | FastRequest


def response_head(status: int, reason: str, headers: Mapping[str, str], close: bool) -> bytes:
    """Status line and header block. A CR or LF inside a name or value (header injection) raises ValueError, as
    aiohttp's writer does."""
    parts = [f"HTTP/1.1 {status} {reason}\r\n"]
    parts += [f"{k}: {v}\r\n" for k, v in headers.items()]
    if "Date" not in headers:
        parts.append(f"Date: {rfc822_formatted_time()}\r\n")
    if "Server" not in headers:
        parts.append(f"Server: {SERVER_SOFTWARE}\r\n")
    if close:
        parts.append("Connection: close\r\n")
    parts.append("\r\n")
    text = "".join(parts)
    lines = len(parts)
    if text.count("\n") != lines or text.count("\r") != lines:
        raise ValueError("newline or carriage return in the status line or a header")
    return text.encode("utf-8", "surrogateescape")


class FastResponse(web.StreamResponse):
    """A StreamResponse written by the lean server: the head waits for the first body bytes (one system call for a
    JSON answer); without a Content-Length the body is chunked (event streams)."""

    def __init__(
        self, conn: FastProtocol, *, status: int, reason: str | None, headers: Mapping[str, str] | None
    ) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
        self._conn = conn
        self._started = False
        self._done = False
        self._is_chunked = False
        self._bodiless = False
        self._pending_head: bytes | None = None

    @property
    def prepared(self) -> bool:
        return self._started

    async def prepare(self, request: Any) -> None:
        if self._started:
            return
        self._started = True
        conn = self._conn
        conn.response_started = True
        await conn.server.on_prepare(request, self)
        headers = self.headers
        status = self.status
        if status < 200 or status in (204, 304):
            # no body by definition (RFC 9112 6.3): no framing headers, and nothing written after the head
            self._bodiless = True
            headers.popall("Content-Length", None)
            headers.popall("Transfer-Encoding", None)
        elif "Content-Length" not in headers:
            self._is_chunked = True
            headers["Transfer-Encoding"] = "chunked"
        self._pending_head = response_head(status, self.reason, headers, conn.closing)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._bodiless:
            return
        if self._done:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not self._started:
            raise RuntimeError("Cannot call write() before prepare()")
        conn = self._conn
        transport = conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        body = data if type(data) is bytes else bytes(data)
        if self._is_chunked:
            body = b"%x\r\n%b\r\n" % (len(body), body)
        head, self._pending_head = self._pending_head, None
        transport.write(head + body if head is not None else body)
        if conn.write_paused:
            await conn.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        if self._done:
            return
        if data:
            await self.write(data)
        self._done = True
        self._eof_sent = True
        transport = self._conn.transport
        head, self._pending_head = self._pending_head, None
        tail = b"0\r\n\r\n" if self._is_chunked else b""
        if transport is not None and not transport.is_closing() and (head is not None or tail):
            transport.write(head + tail if head is not None else tail)


class FastServer:
    """The listener's protocol factory. Knows its connections (for the drain) and the aiohttp server that takes
    over every connection the lean path does not serve."""

    def __init__(
        self,
        fallback: web.Server,
        handler: Handler,
        route_transport: RouteTransport,
        *,
        max_body_bytes: int,
        on_prepare: Callable[[Any, web.StreamResponse], Awaitable[None]],
        on_enter: Callable[[Any], None],
        on_leave: Callable[[Any], None],
        on_hand_over: Callable[[], None] = lambda: None,
    ) -> None:
        self.fallback = fallback
        self.handler = handler
        self.route_transport = route_transport
        self.max_body_bytes = max_body_bytes
        self.on_prepare = on_prepare
        self.on_enter = on_enter
        self.on_leave = on_leave
        self.on_hand_over = on_hand_over
        self.connections: set[FastProtocol] = set()
        self.closing = False
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> FastProtocol:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._sweep)
        return FastProtocol(self)

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            if conn.idle_since is not None and now - conn.idle_since > KEEPALIVE_SECONDS:
                conn.close()
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._sweep)

    def pre_shutdown(self) -> None:
        """Stop serving: idle connections close now, busy ones after their current answer."""
        self.closing = True
        for conn in list(self.connections):
            if conn.idle_since is not None:
                conn.close()

    def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            conn.abort()


class FastProtocol(asyncio.Protocol):
    """One client connection while it is served by the lean path."""

    def __init__(self, server: FastServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self._buf = bytearray()
        self._busy: FastRequest | None = None
        self.closing = False  # answer with `Connection: close`, then close
        self.idle_since: float | None = time.monotonic()
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        # per-request parse state: httptools callbacks, then a parsed head whose body is still arriving
        self._headers: list[tuple[str, str]] = []
        self._head_done = False
        self._pending: tuple[str, int, CIMultiDictProxy[str], int, bool] | None = None
        self.response_started = False  # the current request's answer head is (about to be) out

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio.get_running_loop() checks the pid with a getpid() system call each time: look it up once
        self._loop = asyncio.get_running_loop()
        self.transport = t = cast(asyncio.Transport, transport)
        tcp_nodelay(t, True)
        peer = t.get_extra_info("peername")
        if isinstance(peer, (list, tuple)) and peer:
            self.remote = str(peer[0])
        self.server.connections.add(self)
        if self.server.closing:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self.idle_since = None
        busy = self._busy
        if busy is not None and busy.task is not None:
            # as aiohttp's handler_cancellation: the client left, so its handler (and upstream request) stops
            busy.task.cancel()
        self._wake_writer(ConnectionResetError("Connection lost"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._busy is None:
            self._next()
        elif len(self._buf) > READ_HIGH_WATER and self.transport is not None and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        # as aiohttp: the client's end of input is its leaving; the transport closes and a request in flight is
        # cancelled (connection_lost), which also closes its upstream request
        return None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer(None)

    # ------------------------------------------------------------------ flow control, closing

    async def drain(self) -> None:
        if not self.write_paused:
            return
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("Connection lost")
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._drain_waiter = self._loop.create_future()
        await waiter

    def _wake_writer(self, exc: Exception | None) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)
                waiter.exception()  # retrieved: nobody may be waiting any more

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ requests

    def _next(self) -> None:
        """At a request boundary: serve the next request once it is complete and of the fast shape, hand the
        connection to aiohttp as soon as it cannot be, or wait for more bytes."""
        buf = self._buf
        if not buf or self.transport is None:
            return
        pending = self._pending
        if pending is None:
            n = min(len(buf), len(_PREFIX))
            if buf[:n] != _PREFIX[:n]:
                self._hand_over()  # GET, DELETE, a WebSocket upgrade, another path: aiohttp's from the first bytes
                return
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                lf = buf.find(b"\n")
                if len(buf) > MAX_HEAD_BYTES or (lf >= 0 and (lf == 0 or buf[lf - 1] != 13)) or b"\n\n" in buf:
                    # too long, or lines ending in a bare LF: aiohttp's parser decides what that is
                    self._hand_over()
                return  # the rest of the head is on its way
            head_len = end + 4
            name = self._route(bytes(buf[: buf.find(b"\r\n")]))
            parsed = (
                self._parse_head(bytes(buf[:head_len])) if name is not None and head_len <= MAX_HEAD_BYTES else None
            )
            if name is None or parsed is None:
                self._hand_over()
                return
            pending = self._pending = (name, head_len, *parsed)
        name, head_len, headers, length, keep_alive = pending
        if len(buf) < head_len + length:
            return  # the body is on its way (its head stays parsed meanwhile)
        self._pending = None
        body = bytes(buf[head_len : head_len + length])
        del buf[: head_len + length]
        self._start(name, headers, body, keep_alive)

    def _route(self, line: bytes) -> str | None:
        """The server name of a `POST /mcp/{name} HTTP/1.1` line whose route is Streamable HTTP, else None."""
        if not (line.startswith(_PREFIX) and line.endswith(_SUFFIX)):
            return None
        raw = line[len(_PREFIX) : -len(_SUFFIX)]
        if not raw or any(b in raw for b in _NOT_A_NAME):
            return None
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        if not name.isprintable():
            return None
        transport = self.server.route_transport(name)
        if transport is not None and transport != "streamable-http":
            return None
        return name

    def _parse_head(self, head: bytes) -> tuple[CIMultiDictProxy[str], int, bool] | None:
        """Headers, body length and keep-alive of a head the lean path serves; None sends it to aiohttp."""
        self._headers = []
        self._head_done = False
        parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(head)
        except httptools.HttpParserError:
            return None
        if not self._head_done or parser.should_upgrade():
            return None
        pairs = self._headers
        if len(pairs) > MAX_HEADERS:
            return None
        length: int | None = None
        for name, value in pairs:
            lname = name.lower()
            if lname == "content-length":
                if length is not None or not (value.isascii() and value.isdigit()):
                    return None  # two lengths, or a malformed one: aiohttp refuses it properly
                length = int(value)
            elif lname in ("transfer-encoding", "expect", "upgrade"):
                return None
        if length is None or length > self.server.max_body_bytes:
            return None
        return CIMultiDictProxy(CIMultiDict(pairs)), length, parser.should_keep_alive()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self._head_done = True

    def _hand_over(self) -> None:
        """Give the connection, with every byte received and not yet served, to aiohttp's server for good."""
        transport = self.transport
        if transport is None:
            return
        self.server.connections.discard(self)
        self.server.on_hand_over()
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        data, self._buf = bytes(self._buf), bytearray()
        self.transport = None
        handler = self.server.fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if data:
            handler.data_received(data)

    def _start(self, name: str, headers: CIMultiDictProxy[str], body: bytes, keep_alive: bool) -> None:
        if not keep_alive or self.server.closing:
            self.closing = True
        request = FastRequest(self, name, headers, body)
        self._busy = request
        self.response_started = False
        self.idle_since = None
        request.task = self._loop.create_task(self._serve(request))

    async def _serve(self, request: FastRequest) -> None:
        server = self.server
        server.on_enter(request)
        try:
            try:
                resp = await server.handler(request)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("unhandled error in the lean server's handler", path=request.path)
                if self.response_started:
                    self.abort()  # the head is out: no error answer is possible, a cut is the honest ending
                    return
                # aiohttp would answer 500 too; ours is the gateway's JSON-RPC error body
                resp = render_error(GatewayError("internal error", reason="internal_error"))
            await self._finish(request, resp)
        except asyncio.CancelledError:
            # the client left, or the drain ended a stream (its last chunk may still be buffered: close, not abort)
            self.close()
            return
        except (ConnectionResetError, ValueError) as exc:
            log.debug("answer not written", error=repr(exc))
            self.abort()
            return
        finally:
            server.on_leave(request)
        self._done()

    async def _finish(self, request: FastRequest, resp: web.StreamResponse) -> None:
        if isinstance(resp, FastResponse):
            if not resp.prepared:
                await resp.prepare(request)
            await resp.write_eof()
            return
        if not isinstance(resp, web.Response) or resp.prepared:
            raise ValueError(f"the lean server cannot write a {type(resp).__name__}")
        # an answer built whole (the error renderer's): written like any other, head and body in one write
        body = resp.body
        data = body if isinstance(body, bytes) else b""
        out = FastResponse(self, status=resp.status, reason=resp.reason, headers=resp.headers)
        out.content_length = len(data)
        await out.prepare(request)
        await out.write_eof(data)

    def _done(self) -> None:
        self._busy = None
        if self.closing or self.transport is None:
            self.close()
            return
        self.idle_since = time.monotonic()
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        if self._buf:
            self._next()


async def prepare(out: web.StreamResponse, request: AnyRequest) -> None:
    """`out.prepare(request)` for either server's request: a lean request's answer is a FastResponse, which takes it."""
    await out.prepare(cast(web.BaseRequest, request))


def new_response(
    request: AnyRequest, status: int, reason: str | None, headers: Mapping[str, str]
) -> web.StreamResponse:
    """A streamed answer for this request, written by the server the request came from."""
    if isinstance(request, FastRequest):
        return request.new_response(status, reason, headers)
    return web.StreamResponse(status=status, reason=reason, headers=headers)


class FastSite(web.BaseSite):
    """A TCP listener whose connections start on the lean server (aiohttp's TCPSite gives them to aiohttp's)."""

    __slots__ = ("_fast", "_host", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        fast: FastServer,
        host: str,
        port: int,
        *,
        backlog: int = 128,
        reuse_port: bool | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._fast = fast
        self._host = host
        self._port = port
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._fast, self._host, self._port, backlog=self._backlog, reuse_port=self._reuse_port
        )
