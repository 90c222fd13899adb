"""A lean HTTP/1.1 server for the gateway's hot route, in front of aiohttp's server on the same listener.

Design note (hand-written network code):
  * Replaces aiohttp's server for `POST /mcp/{server}` only; `http.fast_path: false` gives everything back to it.
  * Measured gain: 47-53 us less CPU per request (0.79-0.81x) and 1.06-1.11x throughput at 32 connections, against
    the same gateway with `http.fast_path: false` (docs/benchmark.md, "Limiter, audit and lean-server cost").
  * Invariants: a connection belongs to one server at a time and is handed to aiohttp only at a request boundary,
    with every byte received, never back; it serves nothing but the shape below and answers, refuses and audits
    exactly as aiohttp's path does (the e2e suite runs both ways, `make test`); it uses aiohttp internals
    (`RequestHandler` adoption in gateway/net/aiohttp_conn.py, helpers), so pyproject.toml pins aiohttp's minor.
  * Obsolete when aiohttp's own server costs within a few us per request of this one (re-measure with the bench's
    `(c, aiohttp server)` target on every aiohttp upgrade), or the gateway moves to a server that does.

Why: with the lean upstream client in place, aiohttp's server machinery (request and response objects, the URL
dispatcher, middlewares, the payload writer) was the largest share of the gateway's CPU per request that a proxy
does not need (docs/benchmark.md). Almost all MCP traffic is one shape: `POST /mcp/{server}` over HTTP/1.1 with a small
`Content-Length` body. This server parses that shape with httptools (C), hands the Streamable HTTP handler a
`FastRequest` with the few attributes it reads, and writes the answer's head and body in one system call. A session's
standalone event stream, `GET /mcp/{server}` without a body, is served here too: a client opens it and sends its next
POST a millisecond later, and the GET must not lose that race on a slower path (issue 16; the upstream may send a
server-to-client request only on that stream).

Everything else goes to aiohttp, untouched: any other method or path, WebSocket upgrades, chunked or oversized
bodies, `Expect`, HTTP/1.0, query strings, percent-encoded names, a route whose transport is not Streamable HTTP,
a head without exactly one `Host`, a head the parser refuses or one over the size limits. The connection is handed
over at a request boundary with the bytes received so far (`transport.set_protocol`), and stays with aiohttp from
then on, so both servers never share a connection. `http.fast_path: false` turns this server off.

Slow clients (gateway/net/frontdoor.py): each connection keeps one timer for the deadline of what it is waiting for (a
head, a body, the rest of an unread body). A body that has not fully arrived with its head does not hold the
handler back: the handler starts at once with a body still to come, so that the chain can check the credentials
before waiting for a large one (gateway/transports/common.py `authn_before_body`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, cast

import httptools
import structlog
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.tcp_helpers import tcp_nodelay
from multidict import CIMultiDict, CIMultiDictProxy

from gateway import drain
from gateway.errors import GatewayError, render_error
from gateway.net.frontdoor import (
    LINGER_SECONDS,
    BodyTimeout,
    FrontDoor,
    connection_refusal,
    head_timeout,
    refuse_connection,
)
from gateway.responder import OwnResponder

log = structlog.get_logger("gateway.net.h1server")

# Head limits: a head beyond them is handed to aiohttp, whose own limits (and error answers) then apply.
MAX_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 100
# how often idle connections are looked for (cheaper than a timer per request)
SWEEP_SECONDS = 15.0
# unread bytes buffered behind a request in flight (pipelining) before the socket stops being read
READ_HIGH_WATER = 256 * 1024

_PREFIX = b"POST /mcp/"
_GET_PREFIX = b"GET /mcp/"
_SUFFIX = b" HTTP/1.1"
# bytes that send a route name to aiohttp's dispatcher (a sub-path, a query, an escape, a fragment)
_NOT_A_NAME = (b"/", b"?", b"%", b"#", b" ")

# what a connection's read deadline is for
_IDLE = 0  # between requests: the keep-alive sweep's business
_HEAD = 1  # a request head is arriving
_BODY = 2  # a handler runs while its request's body is still arriving
_BUSY = 3  # a handler runs, its request's body complete
_LINGER = 4  # the answer went out before the body came: the rest is read and dropped, then the connection closes
_DRAIN = 5  # the body was too slow: its handler is answering 408; input is dropped, then the connection closes

# the Streamable HTTP handler; a FastRequest is handed to it as the core's OwnResponder (gateway/responder.py), so
# mypy checks that the lean server's requests keep the shape the core reads
Handler = Callable[[OwnResponder], Awaitable[web.StreamResponse]]
# which transport a route name uses under the policy in force (None: no such server)
RouteTransport = Callable[[str], str | None]


class Fallback(Protocol):
    """Makes aiohttp's connection handler for a connection the lean server gives up (gateway/net/aiohttp_conn.py)."""

    def adopt(self, counted_peer: str | None, head_deadline: float | None) -> asyncio.Protocol:
        """A handler for a connection already counted against `counted_peer`'s cap, whose current request head
        is due at `head_deadline` (None: no head has started)."""
        ...


class FastBody:
    """The request body: `readany()` gives it once, then b"" (the end), like aiohttp's reader. A body still
    `pending` is waited for; a body that came too late raises BodyTimeout."""

    __slots__ = ("_data", "_error", "_waiter", "pending")

    def __init__(self, data: bytes, pending: bool = False) -> None:
        self._data = data
        self.pending = pending
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def readany(self) -> bytes:
        if self.pending:
            await self._wait()
        data, self._data = self._data, b""
        return data

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def feed(self, data: bytes) -> None:
        """The whole body has arrived."""
        self._data = data
        self.pending = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class FastRequest:
    """The subset of aiohttp's `BaseRequest` the Streamable HTTP handler and the chain read."""

    __slots__ = (
        "_conn",
        "audit_ctx",
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
        body: FastBody,
        length: int | None,
        method: str = "POST",
    ) -> None:
        self._conn = conn
        self.method = method
        self.path = "/mcp/" + name
        self.match_info = {"server": name}
        self.headers = headers
        self.content_length = length
        self.content = body
        self.remote = conn.remote
        self.task: asyncio.Task[None] | None = None
        self.audit_ctx: Any = None  # the context, for the audit journal (ahead of the answer)

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._conn.transport

    def new_response(self, status: int, reason: str | None, headers: Mapping[str, str]) -> FastResponse:
        return FastResponse(self._conn, status=status, reason=reason, headers=headers)


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


def refusal_bytes(err: GatewayError) -> bytes:
    """The whole answer, closing the connection, to a refusal made outside any request handler (a connection over
    its peer's cap, a head that came too late): the error renderer's status, headers and body."""
    resp = render_error(err)
    body = resp.body if isinstance(resp.body, bytes) else b""
    headers = dict(resp.headers)
    headers["Content-Length"] = str(len(body))
    return response_head(resp.status, resp.reason, headers, close=True) + body


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
        if self._is_chunked and getattr(request, "method", None) == "GET":
            # a GET event stream may stay quiet for long: its head goes out now, as aiohttp's would, so the client
            # knows the stream is open
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                head, self._pending_head = self._pending_head, None
                transport.write(head)

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
        fallback: Fallback,
        handler: Handler,
        route_transport: RouteTransport,
        door: FrontDoor,
        *,
        max_body_bytes: int,
        on_prepare: Callable[[Any, web.StreamResponse], Awaitable[None]],
        on_enter: Callable[[Any], None],
        on_leave: Callable[[Any], None],
        on_hand_over: Callable[[], None] = lambda: None,
        keepalive_seconds: float,
    ) -> None:
        self.keepalive_seconds = keepalive_seconds
        # the sweep runs often enough that an idle connection is closed within a quarter of the idle time late
        self._sweep_every = min(SWEEP_SECONDS, max(0.05, keepalive_seconds / 4))
        self.fallback = fallback
        self.handler = handler
        self.route_transport = route_transport
        self.door = door
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
            self._sweeper = asyncio.get_running_loop().call_later(self._sweep_every, self._sweep)
        return FastProtocol(self)

    def _sweep(self) -> None:
        now = time.monotonic()
        idle = self.keepalive_seconds
        for conn in list(self.connections):
            if conn.idle_since is not None and now - conn.idle_since > idle:
                conn.close()
        self._sweeper = asyncio.get_running_loop().call_later(self._sweep_every, self._sweep)

    def pre_shutdown(self) -> None:
        """The drain began: every answer not yet started says `Connection: close` and its connection closes after
        it. Idle connections stay open for the drain's grace (gateway/drain.py): closing one now would reset the
        request a client may be sending into it."""
        self.closing = True
        for conn in self.connections:
            if conn._busy is not None and not conn.response_started:
                conn.closing = True

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
        # per-request parse state (httptools callbacks)
        self._headers: list[tuple[str, str]] = []
        self._head_done = False
        self._keep_alive = True
        self._parser: httptools.HttpRequestParser | None = None
        self.response_started = False  # the current request's answer head is (about to be) out
        # the read deadline (gateway/net/frontdoor.py): what it is for, when it is due, the one timer that enforces it
        self._phase = _IDLE
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._peer: str | None = None  # the address counted against the per-peer cap, released at the end
        # a body still arriving after its handler started: the reader, its length, when it began and last moved,
        # and (lingering) the bytes of it still to come
        self._body: FastBody | None = None
        self._body_len = 0
        self._body_started = 0.0
        self._body_last = 0.0
        self._body_got = 0

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio.get_running_loop() checks the pid with a getpid() system call each time: look it up once
        self._loop = asyncio.get_running_loop()
        t = cast(asyncio.Transport, transport)
        peer = t.get_extra_info("peername")
        if isinstance(peer, (list, tuple)) and peer:
            self.remote = str(peer[0])
        server = self.server
        if not server.door.admit(self.remote):
            refuse_connection(t, refusal_bytes(connection_refusal()))
            return
        self._peer = self.remote
        self.transport = t
        tcp_nodelay(t, True)
        server.connections.add(self)
        # a connection that sends nothing is held to the head deadline too
        self._phase = _HEAD
        self._arm(self._loop.time() + server.door.limits.head_seconds)
        # accepted while draining: served with `Connection: close`, or closed by the drain if it stays quiet

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.door.release(self._peer)
        self._peer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None
        self.idle_since = None
        busy = self._busy
        if busy is not None and busy.task is not None:
            # as aiohttp's handler_cancellation: the client left, so its handler (and upstream request) stops
            busy.task.cancel()
        self._wake_writer(ConnectionResetError("Connection lost"))

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase >= _LINGER:
            self._drop(len(data))
            return
        self._buf += data
        if self._busy is None:
            self._next()
        elif phase == _BODY:
            self._body_arrived()
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

    # ------------------------------------------------------------------ drain (gateway/drain.py)

    def drain_state(self) -> int:
        if self._busy is not None:
            return drain.HANDLING
        if self._buf or self._phase >= _LINGER:
            return drain.WAITING
        return drain.IDLE

    def drain_close(self) -> bool:
        transport = self.transport
        if transport is None:
            return True
        if not drain.quiet_to_close(transport):
            return False
        transport.close()
        return True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ read deadlines

    def _arm(self, deadline: float) -> None:
        """Make `deadline` the one in force. The timer is replaced only when it would fire after it; an earlier
        timer finds the deadline moved and reschedules itself."""
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_deadline)

    def _body_due(self) -> float:
        return self.server.door.limits.body_deadline(self._body_started, self._body_last, self._body_got)

    def _on_deadline(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None:
            return
        phase = self._phase
        if phase == _HEAD:
            due = self._deadline
        elif phase == _BODY:
            self._body_got = len(self._buf)
            due = self._body_due()
        elif phase >= _LINGER:
            due = min(self._deadline, self._body_due()) if phase == _LINGER else self._deadline
        else:
            return  # nothing is being waited for (the timer of a deadline that has passed)
        now = self._loop.time()
        if now < due:
            self._timer = self._loop.call_at(due, self._on_deadline)
            return
        door = self.server.door
        if phase == _HEAD:
            # nobody is serving this connection: the refusal is written here, and the connection closed
            door.refused("head_timeout")
            self.server.connections.discard(self)
            transport.write(refusal_bytes(head_timeout()))
            transport.close()
        elif phase == _BODY:
            # the handler waiting for the body answers 408 (audited); the rest of the body is not wanted
            door.refused("body_timeout")
            self._phase = _DRAIN
            self.closing = True
            self._buf.clear()
            body = self._body
            if body is not None:
                body.fail(BodyTimeout())
            self._arm(now + LINGER_SECONDS)
        else:
            transport.close()

    def _drop(self, n: int) -> None:
        """Input after the answer to a request whose body was not read (LINGER), or after a body timeout (DRAIN)."""
        if self._phase == _LINGER:
            self._body_got += n
            self._body_last = self._loop.time()
            if self._body_got >= self._body_len:
                self.close()  # the body is complete: nothing unread is left to reset the connection

    # ------------------------------------------------------------------ requests

    def _next(self) -> None:
        """At a request boundary: serve the next request once its head is complete and of the fast shape (its body
        may still be on its way), hand the connection to aiohttp as soon as it cannot be, or wait for more bytes."""
        buf = self._buf
        if not buf or self.transport is None:
            return
        n = min(len(buf), len(_PREFIX))
        if buf[:n] != _PREFIX[:n]:
            n = min(len(buf), len(_GET_PREFIX))
            if buf[:n] != _GET_PREFIX[:n]:
                self._hand_over()  # DELETE, HEAD, another path: aiohttp's from the first bytes
                return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            lf = buf.find(b"\n")
            if len(buf) > MAX_HEAD_BYTES or (lf >= 0 and (lf == 0 or buf[lf - 1] != 13)) or b"\n\n" in buf:
                # too long, or lines ending in a bare LF: aiohttp's parser decides what that is
                self._hand_over()
                return
            if self._phase != _HEAD:
                self._phase = _HEAD
                self._arm(self._loop.time() + self.server.door.limits.head_seconds)
            return  # the rest of the head is on its way
        head_len = end + 4
        routed = self._route(bytes(buf[: buf.find(b"\r\n")]))
        parsed = (
            self._parse_head(bytes(buf[:head_len]), routed[0])
            if routed is not None and head_len <= MAX_HEAD_BYTES
            else None
        )
        if routed is None or parsed is None:
            self._hand_over()
            return
        method, name = routed
        headers, length, keep_alive = parsed
        if length is None:
            # a GET without a body (a WebSocket upgrade or a body of its own went to aiohttp above)
            del buf[:head_len]
            self._start(name, headers, FastBody(b""), None, keep_alive, method)
            return
        total = head_len + length
        if len(buf) >= total:
            body = FastBody(bytes(buf[head_len:total]))
            del buf[:total]
            self._start(name, headers, body, length, keep_alive)
            return
        # the body is on its way: the handler starts now (and may authenticate from the head before waiting for it)
        del buf[:head_len]
        now = self._loop.time()
        self._body = body = FastBody(b"", pending=True)
        self._body_len = length
        self._body_started = self._body_last = now
        self._body_got = len(buf)
        self._start(name, headers, body, length, keep_alive)
        self._phase = _BODY
        self._arm(self._body_due())

    def _body_arrived(self) -> None:
        buf = self._buf
        self._body_last = self._loop.time()
        need = self._body_len
        if len(buf) < need:
            return
        body = self._body
        assert body is not None
        data = bytes(buf[:need])
        del buf[:need]
        self._body = None
        self._phase = _BUSY
        body.feed(data)

    def _route(self, line: bytes) -> tuple[str, str] | None:
        """Method and server name of a `POST|GET /mcp/{name} HTTP/1.1` line whose route is Streamable HTTP, else
        None."""
        if not line.endswith(_SUFFIX):
            return None
        if line.startswith(_PREFIX):
            method, start = "POST", len(_PREFIX)
        elif line.startswith(_GET_PREFIX):
            method, start = "GET", len(_GET_PREFIX)
        else:
            return None
        raw = line[start : -len(_SUFFIX)]
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
        return method, name

    def _parse_head(self, head: bytes, method: str = "POST") -> tuple[CIMultiDictProxy[str], int | None, bool] | None:
        """Headers, body length (None: a GET without a body) and keep-alive of a head the lean path serves; None
        sends it to aiohttp."""
        self._headers = []
        self._head_done = False
        self._parser = parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # HttpParserUpgrade (`Connection: Upgrade` with an `Upgrade` header) is not an HttpParserError
            return None
        finally:
            self._parser = None
        if not self._head_done or parser.should_upgrade():
            return None
        pairs = self._headers
        if len(pairs) > MAX_HEADERS:
            return None
        length: int | None = None
        hosts = 0
        for name, value in pairs:
            lname = name.lower()
            if lname == "content-length":
                if length is not None or not (value.isascii() and value.isdigit()):
                    return None  # two lengths, or a malformed one: aiohttp refuses it properly
                length = int(value)
            elif lname == "host":
                hosts += 1
            elif lname in ("transfer-encoding", "expect", "upgrade"):
                return None
        if hosts != 1:
            return None  # (no Host, or two: aiohttp's side answers 400, gateway/http_contract.py)
        if method == "GET":
            if length:
                return None  # a GET with a body: aiohttp reads (and ignores) it
            length = None
        elif length is None or length > self.server.max_body_bytes:
            return None
        return CIMultiDictProxy(CIMultiDict(pairs)), length, self._keep_alive

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self._head_done = True
        # read here, not after feed_data: once a message without a body is complete the parser has reset, and
        # would report keep-alive whatever `Connection: close` said
        assert self._parser is not None
        self._keep_alive = self._parser.should_keep_alive()

    def _hand_over(self) -> None:
        """Give the connection, with every byte received and not yet served, to aiohttp's server for good."""
        transport = self.transport
        if transport is None:
            return
        self.server.connections.discard(self)
        self.server.on_hand_over()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._deadline if self._phase == _HEAD else None
        peer, self._peer = self._peer, None
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        data, self._buf = bytes(self._buf), bytearray()
        self.transport = None
        handler = self.server.fallback.adopt(peer, deadline)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if data:
            handler.data_received(data)

    def _start(
        self,
        name: str,
        headers: CIMultiDictProxy[str],
        body: FastBody,
        length: int | None,
        keep_alive: bool,
        method: str = "POST",
    ) -> None:
        if not keep_alive or self.server.closing:
            self.closing = True
        request = FastRequest(self, name, headers, body, length, method)
        self._busy = request
        self._phase = _BUSY
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
        if self._phase == _BODY:
            # answered (refused) before its body came: the rest of the body is not read, so the connection ends
            self.closing = True
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
        if self.transport is None:
            return
        phase = self._phase
        if phase == _BODY:
            # read and drop the rest of the body for a while before closing (see LINGER_SECONDS)
            self._phase = _LINGER
            self._body = None
            self._body_got = len(self._buf)
            self._buf.clear()
            if self._read_paused:
                self._read_paused = False
                self.transport.resume_reading()
            self._arm(self._loop.time() + LINGER_SECONDS)
            return
        if self.closing:
            self.close()
            return
        self._phase = _IDLE
        self.idle_since = time.monotonic()
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        if self._buf:
            self._next()


class FastSite(web.BaseSite):
    """A TCP listener whose connections start with `protocol_factory`'s protocol: the lean server, or (with
    `http.fast_path: false`) aiohttp's connection handler held to the front door's limits
    (gateway/net/aiohttp_conn.py)."""

    __slots__ = ("_factory", "_host", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str,
        port: int,
        *,
        backlog: int = 128,
        reuse_port: bool | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._factory = protocol_factory
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
            self._factory, self._host, self._port, backlog=self._backlog, reuse_port=self._reuse_port
        )
