"""A lean keep-alive HTTP/1.1 client for the forward path: connections and their per-origin pools.

Design note (hand-written network code):
  * Replaces aiohttp's ClientSession on the forward path only; `upstream.client: aiohttp` switches back to it
    (gateway/upstream/aiohttp_client.py, same pools, timeouts and failure types).
  * Measured gain: it came in one bench step with the Redis multiplexer (gateway/net/redis_mux.py) and chain trims:
    CPU per request over the bare proxy's went from 2.07x to 1.57x (embedded) between the 01:22 and 03:09 runs of
    2026-11-26 (docs/benchmark.md, "History of the hand-written network code"); its own share was not measured
    apart. `upstream.client: aiohttp` is the switch to price it alone.
  * Invariants: a connection's pool slot is given back exactly once (`leased`); waiters are served first come,
    first served and a newcomer never overtakes them; a request is resent only when it was never written, or once
    after the keep-alive race for idempotent methods; unread body bytes are bounded (HIGH_WATER, then the socket is
    paused); every failure is one of the typed errors below, which decide retries and breaker outcomes.
  * Obsolete when aiohttp's client (or another maintained client) costs within a few us per request of this one.

aiohttp's ClientSession was the largest single share of the gateway's CPU per request (docs/benchmark.md): a
ClientRequest, header multidicts, timer contexts, connector bookkeeping and payload writers for every call. A
reverse proxy needs far less, so this client does only that: the request goes out in one write, the answer is
parsed by httptools (C) into a bounded buffer, and connections live in a pool with FIFO waiters. No redirects,
cookies, decompression or proxies. Health checks, JWKS and WebSocket upstreams keep using aiohttp.

Failures are typed by what they mean for a retry: `H1ConnectError` (the request never left: refused, DNS, connect
timeout, no pooled connection in time), `H1Disconnected` (the connection broke after sending, before the answer's
headers), `H1ResponseTimeout` (no headers within the first-byte timeout), `H1ProtocolError` (a malformed answer),
and `H1BodyError` / `H1BodyTimeout` while the body streams.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections import deque
from functools import lru_cache
from typing import NamedTuple, cast
from urllib.parse import quote, unquote, urlsplit

import httptools
from aiohttp.tcp_helpers import tcp_nodelay
from multidict import CIMultiDict, CIMultiDictProxy

# Unread body bytes above which the upstream socket stops being read: a slow client must not make the gateway
# buffer an unbounded stream (the kernel's buffers and TCP flow control then hold the upstream back).
HIGH_WATER = 256 * 1024
# Methods whose repeat cannot change the outcome (RFC 9110 9.2.2). Only these are resent after the keep-alive race,
# because a request that reached the upstream just before it closed may have been acted on (RFC 9112 9.3.1).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# aiohttp's rule, kept so upstreams see the same requests: these methods send no Content-Length without a body
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_TARGET_SAFE = "/?:@!$&'()*+,;=%"  # RFC 3986 pchar and query characters, plus '%' so existing escapes stay as they are


class H1Error(Exception):
    """Base of the client's failures."""


class H1ConnectError(H1Error):
    """The request was never sent: connection refused, DNS failure, connect timeout or no pooled connection in time."""


class H1ConnectTimeout(H1ConnectError):
    pass


class H1PoolTimeout(H1ConnectError):
    pass


class H1Disconnected(H1Error):
    """The connection broke before the answer's headers were complete: after the request was written, or (`written`
    False) on a connection found dead just before."""

    def __init__(self, message: str, *, before_any_byte: bool, written: bool = True) -> None:
        super().__init__(message)
        self.before_any_byte = before_any_byte  # no byte of an answer arrived
        self.written = written  # the request was handed to the socket


class H1ResponseTimeout(H1Error):
    """No answer headers within the first-byte timeout."""


class H1ProtocolError(H1Error):
    """The upstream's answer is not valid HTTP/1.1."""


class H1BodyError(H1Error):
    """The answer's body broke off: the connection closed or reset early, or the body was malformed."""


class H1BodyTimeout(H1BodyError):
    """The upstream sent nothing for longer than the idle timeout in the middle of a body. Deliberately not a
    TimeoutError: relays treat TimeoutError from their own keepalive timers as "send a keepalive and read again"."""


class Endpoint(NamedTuple):
    origin: str  # scheme://host:port, the pool key and the metric label
    host: str
    port: int
    tls: bool
    host_header: str
    target: str  # path and query, as sent on the request line
    authorization: str | None  # Basic credentials from the URL's userinfo, as aiohttp sent them


@lru_cache(maxsize=4096)
def parse_url(url: str) -> Endpoint:
    """Split an upstream URL once; upstream URLs repeat (configured instances, bound legacy session endpoints)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = scheme == "https"
    host = parts.hostname
    port = parts.port or (443 if tls else 80)
    bracketed = f"[{host}]" if ":" in host else host
    host_header = bracketed if port == (443 if tls else 80) else f"{bracketed}:{port}"
    target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_TARGET_SAFE)
    auth = None
    if parts.username is not None:
        userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(userinfo.encode("latin-1")).decode("ascii")
    return Endpoint(f"{scheme}://{host}:{port}", host, port, tls, host_header, target, auth)


def build_request(
    method: str,
    endpoint: Endpoint,
    headers: CIMultiDict[str],
    body: bytes | None,
) -> bytes:
    """Request line, headers and body as one buffer (one write, one segment for small requests)."""
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # one scan of the block instead of four per header: each field contributes exactly one CR and one LF
    if fields.count("\n") != len(headers) or fields.count("\r") != len(headers):
        raise ValueError("newline in a request header")
    # aiohttp's defaults, kept so upstreams see the same requests
    if "Accept" not in headers:
        fields += "Accept: */*\r\n"
    if endpoint.authorization is not None and "Authorization" not in headers:
        fields += f"Authorization: {endpoint.authorization}\r\n"
    if method not in _BODYLESS_METHODS or body:
        if method == "POST" and "Content-Type" not in headers:
            fields += "Content-Type: application/octet-stream\r\n"
        fields += f"Content-Length: {len(body) if body else 0}\r\n"
    head = f"{method} {endpoint.target} HTTP/1.1\r\nHost: {endpoint.host_header}\r\n{fields}\r\n".encode(
        "utf-8", "surrogateescape"
    )
    return head + body if body else head


@lru_cache(maxsize=1)
def _tls() -> ssl.SSLContext:
    """One verifying context for all upstreams (building one loads the CA store)."""
    return ssl.create_default_context()


class H1Body:
    """The answer's body as it arrives: `readany()` (b"" at the end) or `async for chunk in body`."""

    __slots__ = ("_chunks", "_conn", "_eof", "_exc", "_idle", "_last", "_loop", "_paused", "_size", "_waiter")

    def __init__(self, conn: H1Connection, loop: asyncio.AbstractEventLoop, idle: float) -> None:
        self._conn: H1Connection | None = conn
        self._loop = loop
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._exc: H1BodyError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._idle = idle
        self._last = loop.time()
        self._paused = False

    def __aiter__(self) -> H1Body:
        return self

    async def __anext__(self) -> bytes:
        data = await self.readany()
        if not data:
            raise StopAsyncIteration
        return data

    async def readany(self) -> bytes:
        while True:
            # an error wins over buffered bytes (as in aiohttp): a broken body found before anything was relayed
            # still gets the client a well-formed error instead of a truncated answer
            if self._exc is not None:
                raise self._exc
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._size = 0
                if self._paused:
                    self._resume()
                return data
            if self._eof:
                return b""
            await self._wait()

    async def _wait(self) -> None:
        loop = self._loop
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        # measured from the last bytes received, not from this wait: a relay that cancels its read every keepalive
        # period must not restart the upstream's idle clock
        timer = loop.call_at(self._last + self._idle, self._on_idle, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if self._waiter is waiter:
                self._waiter = None

    def _on_idle(self, waiter: asyncio.Future[None]) -> None:
        if self._waiter is waiter and not waiter.done():
            self._exc = H1BodyTimeout("upstream sent nothing within the idle timeout")
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self._last = self._loop.time()
        if self._waiter is not None:
            self._wake()
        if self._size > HIGH_WATER and not self._paused and self._conn is not None:
            self._paused = True
            self._conn.pause_reading()

    def _resume(self) -> None:
        self._paused = False
        # the upstream could not send while paused; its idle clock starts again now
        self._last = self._loop.time()
        if self._conn is not None:
            self._conn.resume_reading()

    def _feed_eof(self) -> None:
        self._eof = True
        if self._paused:
            # the message is complete: whatever the connection reads next belongs to no one in this body
            self._resume()
        self._wake()

    def _fail(self, exc: H1BodyError) -> None:
        if self._exc is None and not self._eof:
            self._exc = exc
        self._wake()

    def _detach(self) -> None:
        self._conn = None


class H1Response:
    """Status, headers and body stream of one answer. `close()` hands the connection back (or closes it)."""

    __slots__ = ("_conn", "content", "content_length", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content_length: int | None,
        content: H1Body,
        conn: H1Connection,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self.content = content
        self._conn: H1Connection | None = conn

    def close(self) -> None:
        """Reuse the connection if the body was read to its end on a keep-alive connection; otherwise close it."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.finish()

    def end(self) -> None:
        """End a streaming answer here, on the gateway's decision: the reader gets what is buffered, then a normal
        end (so an event stream is closed cleanly, never cut mid-event by the gateway); the connection, stopped
        mid-message, is closed and its pool slot freed at once."""
        self.content._feed_eof()
        self.close()

    def __del__(self) -> None:
        # a caller that lost its response to an exception must not leak the pool slot; the pool is only touched
        # from the loop, never from inside whatever code the garbage collector interrupted
        conn = self._conn
        if conn is not None:
            self._conn = None
            with contextlib.suppress(RuntimeError):  # the loop is already closed: nothing is left to release
                conn.loop.call_soon(conn.finish)


def _expire_headers(fut: asyncio.Future[H1Response]) -> None:
    if not fut.done():
        fut.set_exception(H1ResponseTimeout("upstream sent no answer headers in time"))


class H1Connection(asyncio.Protocol):
    """One upstream connection: writes a request, parses its answer, and tells its pool whether it is reusable."""

    __slots__ = (
        "_body",
        "_broken",
        "_complete",
        "_exchange",
        "_got_bytes",
        "_headers_fut",
        "_idle_timeout",
        "_interim",
        "_keep_alive",
        "_lost",
        "_parser",
        "_pool",
        "_raw_headers",
        "_reason",
        "_until_close",
        "idle",
        "idle_since",
        "leased",
        "loop",
        "reused",
        "transport",
    )

    def __init__(self, pool: H1Pool) -> None:
        self._pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.reused = False  # has carried an earlier exchange: only such a connection can be stale
        self.idle = False
        self.idle_since = 0.0
        # holds a pool slot; cleared by the one release or discard that gives the slot back, so a late second
        # one (a response collected after its request already failed) cannot free the slot twice
        self.leased = True
        self._exchange = False  # a request is out and its answer not complete
        self._headers_fut: asyncio.Future[H1Response] | None = None
        # the body, not the response: a response its caller dropped unclosed must be collectable (see __del__)
        self._body: H1Body | None = None
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._got_bytes = False
        self._complete = False
        self._keep_alive = False
        self._until_close = False
        self._broken = False
        self._interim = False
        self._lost = False
        self._idle_timeout = 0.0

    # ------------------------------------------------------------------ transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # requests go out in one write and must not wait for the ACK of the previous segment
        tcp_nodelay(self.transport, True)

    def data_received(self, data: bytes) -> None:
        if not self._exchange:
            # an idle connection has nothing to say; bytes here mean the upstream and we disagree on framing
            self._broken = True
            self.close()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(H1ProtocolError("upstream switched protocols"))
        except httptools.HttpParserCallbackError as exc:
            # httptools replaces what a callback raised with "User callback error": keep the callback's own reason
            cause = exc.__context__
            if isinstance(cause, H1ProtocolError):
                self._fail(cause)
            else:
                self._fail(H1ProtocolError(f"invalid HTTP answer: {exc}"))
        except httptools.HttpParserError as exc:
            self._fail(H1ProtocolError(f"invalid HTTP answer: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._pool._lost(self)
        if not self._exchange:
            return
        self._exchange = False
        fut = self._headers_fut
        if fut is not None:
            self._headers_fut = None
            if not fut.done():
                if self._got_bytes:
                    fut.set_exception(
                        H1Disconnected("connection closed inside the answer headers", before_any_byte=False)
                    )
                else:
                    fut.set_exception(H1Disconnected("connection closed before any answer", before_any_byte=True))
            return
        body = self._body
        if body is not None and not self._complete:
            if self._until_close and exc is None:
                # a body without Content-Length or chunking ends where the connection does
                self._complete = True
                self._keep_alive = False
                body._feed_eof()
            else:
                reason = "reset" if exc is not None else "closed"
                body._fail(H1BodyError(f"upstream connection {reason} before the end of the answer"))

    # ------------------------------------------------------------------ parser callbacks (httptools)

    def on_message_begin(self) -> None:
        if not self._exchange:
            raise H1ProtocolError("an answer nobody asked for")  # surfaces as a parser error in data_received
        self._raw_headers = []
        self._reason = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                raise H1ProtocolError("upstream switched protocols")
            # interim answers (103 Early Hints...) precede the real one and are not relayed
            self._interim = True
            return
        headers: CIMultiDict[str] = CIMultiDict(
            [(n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in self._raw_headers]
        )
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        length: int | None = None
        if not chunked:
            raw = headers.get("Content-Length")
            if raw is not None:
                length = int(raw)  # llhttp has already refused a malformed, negative or repeated Content-Length
        self._until_close = length is None and not chunked and status not in (204, 304)
        fut = self._headers_fut
        self._headers_fut = None
        if fut is None or fut.done():
            # the requester gave up (timeout, cancel) as the answer came in; it closes the connection
            self._broken = True
            return
        body = H1Body(self, self.loop, self._idle_timeout)
        self._body = body
        fut.set_result(
            H1Response(status, self._reason.decode("latin-1"), CIMultiDictProxy(headers), length, body, self)
        )

    def on_body(self, body: bytes) -> None:
        stream = self._body
        if stream is not None:
            stream._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete = True
        self._exchange = False
        self._keep_alive = self._parser.should_keep_alive()
        body = self._body
        if body is not None:
            body._feed_eof()

    # ------------------------------------------------------------------ used by the pool and the response

    def _fail(self, exc: H1ProtocolError) -> None:
        self._broken = True
        fut = self._headers_fut
        if fut is not None:
            self._headers_fut = None
            if not fut.done():
                fut.set_exception(exc)
        elif self._body is not None and not self._complete:
            self._body._fail(H1BodyError(str(exc)))
        self._exchange = False
        self.close()

    async def exchange(self, data: bytes, first_byte: float, idle: float) -> H1Response:
        """Write one request and wait for its answer's headers."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise H1Disconnected(
                "connection closed before the request was written", before_any_byte=True, written=False
            )
        loop = self.loop
        fut: asyncio.Future[H1Response] = loop.create_future()
        self._headers_fut = fut
        self._body = None
        self._exchange = True
        self._got_bytes = False
        self._complete = False
        self._keep_alive = False
        self._idle_timeout = idle
        transport.write(data)
        timer = loop.call_later(first_byte, _expire_headers, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def reusable(self) -> bool:
        return self._complete and self._keep_alive and not self._broken and not self._lost

    def finish(self) -> None:
        """The response is done with: back to the pool if reusable, else closed."""
        body = self._body
        self._body = None
        if body is not None:
            body._detach()
        self._pool._release(self, self.reusable())

    def close(self) -> None:
        self._broken = True
        if self.transport is not None:
            self.transport.close()


def _expire_waiter(fut: asyncio.Future[H1Connection | None]) -> None:
    if not fut.done():
        fut.set_exception(H1PoolTimeout("no free upstream connection within the pool's max wait"))


class H1Pool:
    """Keep-alive connections to one origin: at most `limit` open, idle ones reused newest first and closed after
    `keepalive` seconds, requests beyond the limit served first come, first served.

    `_in_use` counts slots: connections lent out or being opened. A released connection or a freed slot goes
    straight to the oldest waiter, so a newcomer can never overtake the queue.
    """

    def __init__(self, endpoint: Endpoint, limit: int, keepalive: float) -> None:
        self.loop = asyncio.get_running_loop()
        self._host = endpoint.host
        self._port = endpoint.port
        self._tls = endpoint.tls
        self.limit = limit
        self._keepalive = keepalive
        self._idle: list[H1Connection] = []  # oldest first: appended on release, reused from the end
        self._conns: set[H1Connection] = set()
        self._waiters: deque[asyncio.Future[H1Connection | None]] = deque()
        self._in_use = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False
        self._prewarming: asyncio.Task[None] | None = None

    def stats(self) -> tuple[int, int, int]:
        """(in use, idle, waiting)."""
        return self._in_use, len(self._idle), len(self._waiters)

    async def request(
        self,
        method: str,
        data: bytes,
        *,
        connect_timeout: float,
        wait_timeout: float,
        first_byte: float,
        idle: float,
    ) -> H1Response:
        """Send `data` (a request from `build_request`) and return the answer once its headers are in."""
        conn = await self._acquire(connect_timeout, wait_timeout)
        try:
            return await conn.exchange(data, first_byte, idle)
        except H1Disconnected as exc:
            # The keep-alive race: the upstream closed this idle connection just as the request went out. Resend
            # once, on a new connection in the same slot (another idle one could be just as stale), when the request
            # cannot have been acted on (never written) or acting twice changes nothing (idempotent method).
            stale = exc.before_any_byte and conn.reused
            if not (not exc.written or (stale and method in IDEMPOTENT_METHODS)):
                self._discard(conn)
                raise
            conn.leased = False  # its slot goes to the new connection
            conn.close()
        except BaseException:
            self._discard(conn)
            raise
        conn = await self._connect(connect_timeout)
        try:
            return await conn.exchange(data, first_byte, idle)
        except BaseException:
            self._discard(conn)
            raise

    def prewarm(self, connect_timeout: float) -> None:
        """Open one connection in the background and keep it idle, unless one is idle or opening already, or the
        pool is at its limit: the next request (a stream that is about to be opened) skips the connect."""
        if self.closed or self._idle or self._waiters or self._prewarming is not None or self._in_use >= self.limit:
            return
        self._in_use += 1  # the slot of the connection being opened, as for a request
        self._prewarming = self.loop.create_task(self._prewarm(connect_timeout))

    async def _prewarm(self, connect_timeout: float) -> None:
        try:
            conn = await self._connect(connect_timeout)  # frees the slot if it fails
        except H1Error:
            return
        finally:
            self._prewarming = None
        # parked like a connection given back after an answer (or handed to a waiter); marked reused, so a GET that
        # finds it closed by the upstream meanwhile is resent on a new connection (the keep-alive race)
        self._release(conn, True)

    async def _acquire(self, connect_timeout: float, wait_timeout: float) -> H1Connection:
        if self.closed:
            raise H1ConnectError("upstream pool is closed")
        waiters = self._waiters
        while waiters and waiters[0].done():
            # given up (cancelled or timed out) but not yet removed by its own task: must not make newcomers queue
            waiters.popleft()
        if not waiters:
            idle = self._idle
            while idle:
                conn = idle.pop()
                conn.idle = False
                if conn.transport is not None and not conn.transport.is_closing():
                    self._in_use += 1
                    conn.leased = True
                    return conn
            if self._in_use < self.limit:
                self._in_use += 1
                return await self._connect(connect_timeout)
        got = await self._wait(wait_timeout)
        if got is not None:
            if got.transport is not None and not got.transport.is_closing():
                return got
            got.leased = False  # died between the hand-over and now; its slot is ours for a new connection
            got.close()
        return await self._connect(connect_timeout)

    async def _wait(self, timeout: float) -> H1Connection | None:
        """Queue for a connection (returned) or a free slot (None); either way the slot is already counted."""
        fut: asyncio.Future[H1Connection | None] = self.loop.create_future()
        self._waiters.append(fut)
        timer = self.loop.call_later(timeout, _expire_waiter, fut)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # handed a connection or slot just as we gave up (cancelled): pass it on
                got = fut.result()
                if got is not None:
                    self._release(got, got.reusable())
                else:
                    self._free_slot()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise
        finally:
            timer.cancel()

    async def _connect(self, timeout: float) -> H1Connection:
        """Open a connection in a slot the caller holds; the slot is freed if that fails."""
        try:
            async with asyncio.timeout(timeout):
                _, conn = await self.loop.create_connection(
                    lambda: H1Connection(self),
                    self._host,
                    self._port,
                    ssl=_tls() if self._tls else None,
                    server_hostname=self._host if self._tls else None,
                )
        except TimeoutError:
            self._free_slot()
            raise H1ConnectTimeout(f"connect to {self._host}:{self._port} timed out") from None
        except OSError as exc:  # refused, unreachable, DNS (gaierror), TLS handshake (SSLError)
            self._free_slot()
            raise H1ConnectError(f"connect to {self._host}:{self._port} failed: {exc}") from None
        except BaseException:
            self._free_slot()
            raise
        if self.closed:
            self._discard(conn)
            raise H1ConnectError("upstream pool is closed")
        self._conns.add(conn)
        return conn

    def _discard(self, conn: H1Connection) -> None:
        conn.close()
        if conn.leased:
            conn.leased = False
            self._free_slot()

    def _free_slot(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._in_use -= 1

    def _release(self, conn: H1Connection, reusable: bool) -> None:
        if not conn.leased:
            return  # its slot was already given back
        if not reusable or self.closed:
            self._discard(conn)
            return
        conn.reused = True
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self._in_use -= 1
        conn.leased = False
        conn.idle = True
        conn.idle_since = now = self.loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_at(now + self._keepalive, self._sweep)

    def _sweep(self) -> None:
        # one timer per pool rather than one per idle connection: releases are per request, expiries are rare
        self._sweeper = None
        idle = self._idle
        deadline = self.loop.time() - self._keepalive
        n = 0
        while n < len(idle) and idle[n].idle_since <= deadline:
            n += 1
        expired = idle[:n]
        del idle[:n]
        for conn in expired:
            conn.idle = False
            conn.close()
        if idle:
            self._sweeper = self.loop.call_at(idle[0].idle_since + self._keepalive, self._sweep)

    def _lost(self, conn: H1Connection) -> None:
        self._conns.discard(conn)
        if conn.idle:
            conn.idle = False
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)

    def close(self) -> None:
        """Close every connection, idle or lent out, and fail the waiters (shutdown)."""
        self.closed = True
        if self._prewarming is not None:
            self._prewarming.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(H1ConnectError("upstream pool is closed"))
        for conn in self._idle:
            conn.idle = False
        self._idle.clear()
        for conn in list(self._conns):
            conn.close()
