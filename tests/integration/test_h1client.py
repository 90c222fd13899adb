"""The forward path's HTTP/1.1 client against real loopback servers started by each test.

The servers are raw asyncio streams on purpose: the cases here (an answer cut mid-body, a keep-alive connection
closed as a request goes out, a listener that never completes the TCP handshake) are what no HTTP framework does
on request. Nothing here asserts a duration; timeouts are short only so that the tests end quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from multidict import CIMultiDict

from gateway.auth.principal import Principal
from gateway.context import RequestContext, UpstreamOutcome
from gateway.errors import ConcurrencyLimited, UpstreamPoolExhausted, UpstreamTimeout, UpstreamUnavailable
from gateway.net.h1client import (
    HIGH_WATER,
    H1BodyError,
    H1BodyTimeout,
    H1ConnectError,
    H1ConnectTimeout,
    H1Disconnected,
    H1PoolTimeout,
    H1ProtocolError,
    H1Response,
    H1ResponseTimeout,
    build_request,
    parse_url,
)
from gateway.policy.servers import ServerPolicy
from gateway.upstream.http import HttpForwarder
from gateway.upstream.pool import UpstreamPools
from gateway.upstream.resilient import ResilientForwarder

pytestmark = pytest.mark.integration

Handler = Callable[["Conn"], Awaitable[None]]


@dataclass
class Request:
    line: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Conn:
    """One accepted connection, as the test's handler sees it."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def request(self) -> Request | None:
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if line)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Request(lines[0], headers, body)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def closed_by_peer(self) -> bool:
        """True once the client has closed its side (EOF or reset)."""
        try:
            return await self.reader.read(1) == b""
        except ConnectionError:
            return True


@dataclass
class Server:
    port: int
    conns: list[Conn] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)  # connections whose handler returned

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp?x=1"


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[Server]:
    server = Server(0)
    tasks: set[asyncio.Task[None]] = set()

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(len(server.conns), reader, writer)
        server.conns.append(conn)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(conn)
            server.ended.append(conn.index)
        except asyncio.CancelledError:
            pass  # torn down with the test; ending cancelled would make asyncio's streams log an error
        finally:
            tasks.discard(task)
            writer.close()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    server.port = srv.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        srv.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def ok(body: bytes = b'{"ok":true}', extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


async def answer_all(conn: Conn, server: Server, respond: Callable[[Request], bytes]) -> None:
    while (req := await conn.request()) is not None:
        server.requests.append(req)
        await conn.send(respond(req))


@contextlib.asynccontextmanager
async def pooled(url: str, limit: int = 4, keepalive: float = 30.0) -> AsyncIterator[Any]:
    pools = UpstreamPools()
    policy = ServerPolicy.model_validate(
        {"upstreams": [{"url": url}], "pool": {"max_connections": limit, "keepalive_seconds": keepalive}}
    )
    pool, _ = pools.h1(url, policy.pool)
    try:
        yield pool
    finally:
        await pools.close()


async def get(
    pool: Any,
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    *,
    connect: float = 5,
    wait: float = 5,
    first_byte: float = 5,
    idle: float = 5,
) -> H1Response:
    data = build_request(method, parse_url(url), CIMultiDict([("X-Test", "1")]), body)
    resp: H1Response = await pool.request(
        method, data, connect_timeout=connect, wait_timeout=wait, first_byte=first_byte, idle=idle
    )
    return resp


async def read_all(resp: H1Response) -> bytes:
    buf = bytearray()
    async for chunk in resp.content:
        buf += chunk
    return bytes(buf)


async def until(cond: Callable[[], bool], limit: float = 5.0) -> None:
    """Wait for a condition the loop brings about (a bound on a hang, not a speed assertion)."""
    async with asyncio.timeout(limit):
        while not cond():
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------------------ framing


async def test_request_bytes_and_keep_alive_reuse() -> None:
    async with serve(lambda c: answer_all(c, srv, lambda r: ok())) as srv, pooled(srv.url) as pool:
        for _ in range(3):
            resp = await get(pool, srv.url, "POST", b'{"a":1}')
            assert resp.status == 200 and resp.reason == "OK"
            assert resp.headers.get("content-type") == "application/json" and resp.content_length == 11
            assert await read_all(resp) == b'{"ok":true}'
            resp.close()
        assert len(srv.conns) == 1  # one connection carried all three
        assert pool.stats() == (0, 1, 0)
        req = srv.requests[0]
        assert req.line == "POST /mcp?x=1 HTTP/1.1"
        assert req.headers["host"] == f"127.0.0.1:{srv.port}"
        assert req.headers["content-length"] == "7" and req.body == b'{"a":1}'
        assert req.headers["x-test"] == "1" and req.headers["accept"] == "*/*"


async def test_get_sends_no_content_length_and_host_omits_default_port() -> None:
    up = parse_url("http://up.example/mcp")
    data = build_request("GET", up, CIMultiDict({"Accept": "text/event-stream"}), None)
    assert data == b"GET /mcp HTTP/1.1\r\nHost: up.example\r\nAccept: text/event-stream\r\n\r\n"
    for evil in ({"X-Evil": "a\r\nX-Injected: 1"}, {"X-Evil": "a\nb"}, {"X-Evil": "a\rb"}, {"X\r\nY": "1"}):
        with pytest.raises(ValueError, match="newline"):
            build_request("GET", up, CIMultiDict(evil), None)
    data = build_request("DELETE", parse_url("http://u:p%40ss@up.example:8080/"), CIMultiDict(), None)
    assert data == (
        b"DELETE / HTTP/1.1\r\nHost: up.example:8080\r\nAccept: */*\r\n"
        b"Authorization: Basic dTpwQHNz\r\nContent-Length: 0\r\n\r\n"
    )
    assert parse_url("http://[::1]:8080/a b?q=é").target == "/a%20b?q=%C3%A9"
    assert parse_url("http://[::1]:8080/").host_header == "[::1]:8080"


async def test_chunked_answer_is_decoded_and_the_connection_reused() -> None:
    async def handler(conn: Conn) -> None:
        while (req := await conn.request()) is not None:
            srv.requests.append(req)
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"event: a\n\n", b"data: 1\n\n"):
                await conn.send(b"%x\r\n%s\r\n" % (len(part), part))
                await asyncio.sleep(0.01)
            await conn.send(b"0\r\n\r\n")

    async with serve(handler) as srv, pooled(srv.url) as pool:
        for _ in range(2):
            resp = await get(pool, srv.url)
            assert resp.content_length is None
            assert await read_all(resp) == b"event: a\n\ndata: 1\n\n"
            resp.close()
        assert len(srv.conns) == 1


async def test_close_delimited_answer_ends_at_eof_and_is_not_reused() -> None:
    async def handler(conn: Conn) -> None:
        if await conn.request() is not None:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
            await asyncio.sleep(0.02)
            await conn.send(b" and more")

    async with serve(handler) as srv, pooled(srv.url) as pool:
        for _ in range(2):
            resp = await get(pool, srv.url)
            assert resp.content_length is None
            assert await read_all(resp) == b"all of it and more"
            resp.close()
        assert len(srv.conns) == 2
        assert pool.stats() == (0, 0, 0)


async def test_connection_close_answer_is_not_reused() -> None:
    close = ok(extra="Connection: close\r\n")
    async with serve(lambda c: answer_all(c, srv, lambda r: close)) as srv, pooled(srv.url) as pool:
        for _ in range(2):
            resp = await get(pool, srv.url)
            assert await read_all(resp) == b'{"ok":true}'
            resp.close()
        assert len(srv.conns) == 2


async def test_interim_answers_are_skipped() -> None:
    async def handler(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + ok())

    async with serve(handler) as srv, pooled(srv.url) as pool:
        resp = await get(pool, srv.url)
        assert resp.status == 200 and "Link" not in resp.headers
        assert await read_all(resp) == b'{"ok":true}'
        resp.close()


async def test_garbage_is_a_protocol_error() -> None:
    async def handler(conn: Conn) -> None:
        if await conn.request() is not None:
            await conn.send(b"HELLO THERE\r\n\r\n")
            await asyncio.sleep(1)

    async with serve(handler) as srv, pooled(srv.url) as pool:
        with pytest.raises(H1ProtocolError):
            await get(pool, srv.url)
        assert pool.stats() == (0, 0, 0)


# ------------------------------------------------------------------------------------------------ failures


async def test_eof_mid_body_is_a_body_error_and_frees_the_slot() -> None:
    async def handler(conn: Conn) -> None:
        if await conn.request() is not None:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            await asyncio.sleep(0.05)

    async with serve(handler) as srv, pooled(srv.url) as pool:
        resp = await get(pool, srv.url)
        with pytest.raises(H1BodyError) as err:
            await read_all(resp)
        assert not isinstance(err.value, TimeoutError)
        resp.close()
        assert pool.stats() == (0, 0, 0)


async def test_fresh_connection_closed_before_answering_is_reported_not_retried() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()  # and close without a word

    async with serve(handler) as srv, pooled(srv.url) as pool:
        with pytest.raises(H1Disconnected) as err:
            await get(pool, srv.url)
        assert err.value.before_any_byte
        assert len(srv.conns) == 1
        assert pool.stats() == (0, 0, 0)


async def stale_second_request(conn: Conn, srv: Server) -> None:
    """First connection: answers one request, then closes when the next arrives (as if its keep-alive expired
    just as the request went out). Later connections answer everything."""
    if conn.index > 0:
        await answer_all(conn, srv, lambda r: ok())
        return
    req = await conn.request()
    assert req is not None
    srv.requests.append(req)
    await conn.send(ok())
    await conn.request()


async def test_stale_keep_alive_connection_is_retried_once_for_an_idempotent_request() -> None:
    async with serve(lambda c: stale_second_request(c, srv)) as srv, pooled(srv.url) as pool:
        resp = await get(pool, srv.url)
        await read_all(resp)
        resp.close()
        resp = await get(pool, srv.url)  # goes out on the stale connection, then again on a new one
        assert resp.status == 200 and await read_all(resp) == b'{"ok":true}'
        resp.close()
        assert len(srv.conns) == 2 and len(srv.requests) == 2


async def test_stale_keep_alive_connection_is_reported_for_a_post() -> None:
    """A POST may have been acted on before the connection closed: it is not resent here (the resilient
    forwarder decides, from what the request was, whether a retry is safe)."""
    async with serve(lambda c: stale_second_request(c, srv)) as srv, pooled(srv.url) as pool:
        resp = await get(pool, srv.url, "POST", b"{}")
        await read_all(resp)
        resp.close()
        with pytest.raises(H1Disconnected) as err:
            await get(pool, srv.url, "POST", b"{}")
        assert err.value.before_any_byte
        assert len(srv.conns) == 1
        assert pool.stats() == (0, 0, 0)


async def test_idle_connection_closed_by_the_upstream_is_dropped_from_the_pool() -> None:
    async def handler(conn: Conn) -> None:
        if (req := await conn.request()) is not None:
            await conn.send(ok())
            srv.requests.append(req)

    async with serve(handler) as srv, pooled(srv.url) as pool:
        resp = await get(pool, srv.url)
        await read_all(resp)
        resp.close()
        await until(lambda: pool.stats()[1] == 0)  # the upstream's FIN reached the idle connection
        resp = await get(pool, srv.url)
        assert await read_all(resp) == b'{"ok":true}'
        resp.close()
        assert len(srv.conns) == 2


async def test_first_byte_timeout() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await asyncio.Event().wait()  # never answers, never closes: only the client can end this connection

    async with serve(handler) as srv, pooled(srv.url) as pool:
        with pytest.raises(H1ResponseTimeout):
            await get(pool, srv.url, first_byte=0.2)
        assert pool.stats() == (0, 0, 0)
        assert await asyncio.wait_for(srv.conns[0].closed_by_peer(), 2)


async def test_idle_timeout_mid_body_is_not_reset_by_the_readers_own_timeouts() -> None:
    """A relay that cancels its read every keepalive period must still see the upstream's silence end the body."""

    async def handler(conn: Conn) -> None:
        if await conn.request() is not None:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            await conn.send(b"6\r\ndata:\n\r\n")
            await asyncio.sleep(10)

    async with serve(handler) as srv, pooled(srv.url) as pool:
        resp = await get(pool, srv.url, idle=0.3)
        keepalives = 0
        with pytest.raises(H1BodyTimeout):
            while True:
                try:
                    async with asyncio.timeout(0.05):
                        await resp.content.readany()
                except TimeoutError:
                    keepalives += 1
        assert keepalives > 0
        resp.close()
        assert pool.stats() == (0, 0, 0)


# ------------------------------------------------------------------------------------------------ pool


async def test_pool_limit_waiters_are_served_in_order_and_give_up_after_max_wait() -> None:
    release = asyncio.Event()

    async def handler(conn: Conn) -> None:
        while (req := await conn.request()) is not None:
            srv.requests.append(req)
            if req.body == b"hold":
                await release.wait()
            await conn.send(ok(req.body))

    async with serve(handler) as srv, pooled(srv.url, limit=1) as pool:
        holder = asyncio.create_task(get(pool, srv.url, "POST", b"hold"))
        await until(lambda: len(srv.requests) == 1)
        # a waiter that gives up: a pool-wait timeout means the request was never sent
        with pytest.raises(H1PoolTimeout) as err:
            await get(pool, srv.url, "POST", b"late", wait=0.2)
        assert isinstance(err.value, H1ConnectError)
        order: list[bytes] = []

        async def queued(body: bytes) -> None:
            resp = await get(pool, srv.url, "POST", body)
            order.append(await read_all(resp))
            resp.close()

        second = asyncio.create_task(queued(b"second"))
        await until(lambda: pool.stats()[2] == 1)
        third = asyncio.create_task(queued(b"third"))
        await until(lambda: pool.stats()[2] == 2)
        assert pool.stats() == (1, 0, 2)
        release.set()
        first = await holder
        await read_all(first)
        first.close()
        await asyncio.gather(second, third)
        assert order == [b"second", b"third"]
        assert [r.body for r in srv.requests] == [b"hold", b"second", b"third"]
        assert len(srv.conns) == 1
        assert pool.stats() == (0, 1, 0)


async def test_cancelled_waiter_does_not_leak_its_place() -> None:
    release = asyncio.Event()

    async def handler(conn: Conn) -> None:
        while (req := await conn.request()) is not None:
            if req.body == b"hold":
                await release.wait()
            await conn.send(ok())

    async with serve(handler) as srv, pooled(srv.url, limit=1) as pool:
        holder = asyncio.create_task(get(pool, srv.url, "POST", b"hold"))
        await until(lambda: pool.stats()[0] == 1)
        waiter = asyncio.create_task(get(pool, srv.url))
        await until(lambda: pool.stats()[2] == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert pool.stats() == (1, 0, 0)
        release.set()
        resp = await holder
        await read_all(resp)
        resp.close()
        resp = await get(pool, srv.url)
        resp.close()
        assert pool.stats() == (0, 1, 0)


async def test_idle_connections_expire_after_keepalive() -> None:
    async with serve(lambda c: answer_all(c, srv, lambda r: ok())) as srv, pooled(srv.url, keepalive=0.2) as pool:
        resp = await get(pool, srv.url)
        await read_all(resp)
        resp.close()
        assert pool.stats() == (0, 1, 0)
        await until(lambda: pool.stats()[1] == 0)
        await until(lambda: srv.ended == [0])  # the upstream saw the connection close


async def test_connect_timeout_is_a_connect_error() -> None:
    with unconnectable() as url:
        async with pooled(url, limit=1) as pool:
            with pytest.raises(H1ConnectTimeout) as err:
                await get(pool, url, connect=0.3)
            assert isinstance(err.value, H1ConnectError)
            assert pool.stats() == (0, 0, 0)


async def test_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        url = f"http://127.0.0.1:{port}/mcp"
        async with pooled(url) as pool:
            with pytest.raises(H1ConnectError):
                await get(pool, url)
            assert pool.stats() == (0, 0, 0)


# ------------------------------------------------------------------------------------------------ streaming


async def test_backpressure_pauses_the_upstream_until_the_reader_catches_up() -> None:
    size = 8 * HIGH_WATER
    payload = bytes(range(256)) * (size // 256)

    async def handler(conn: Conn) -> None:
        if await conn.request() is not None:
            await conn.send(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            for i in range(0, size, 65536):
                await conn.send(payload[i : i + 65536])  # drain() blocks while the client is not reading
            await asyncio.sleep(5)

    async with serve(handler) as srv, pooled(srv.url) as pool:
        resp = await get(pool, srv.url)
        transport = srv_transport(resp)
        await until(lambda: not transport.is_reading())
        buffered = resp.content._size
        assert HIGH_WATER < buffered < size  # paused past the high-water mark, well short of the whole body
        got = bytearray()
        while chunk := await resp.content.readany():
            got += chunk
        assert bytes(got) == payload
        resp.close()
        assert pool.stats() == (0, 1, 0)


def srv_transport(resp: H1Response) -> asyncio.Transport:
    conn = resp._conn
    assert conn is not None and conn.transport is not None
    return conn.transport


async def test_closing_an_unfinished_answer_closes_the_upstream_connection() -> None:
    async def handler(conn: Conn) -> None:
        if await conn.request() is not None:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            await conn.send(b"6\r\ndata:\n\r\n")
            srv.requests.append(Request("closed" if await conn.closed_by_peer() else "open", {}, b""))

    async with serve(handler) as srv, pooled(srv.url) as pool:
        resp = await get(pool, srv.url)
        reader = asyncio.create_task(read_all(resp))
        await asyncio.sleep(0.05)
        reader.cancel()  # the client went away mid-stream
        with pytest.raises(asyncio.CancelledError):
            await reader
        resp.close()
        await until(lambda: len(srv.requests) == 1)
        assert srv.requests[0].line == "closed"
        assert pool.stats() == (0, 0, 0)


async def test_cancel_while_waiting_for_headers_closes_the_connection() -> None:
    async def handler(conn: Conn) -> None:
        if await conn.request() is not None:
            srv.requests.append(Request("closed" if await conn.closed_by_peer() else "open", {}, b""))

    async with serve(handler) as srv, pooled(srv.url) as pool:
        task = asyncio.create_task(get(pool, srv.url))
        await until(lambda: len(srv.conns) == 1)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: len(srv.requests) == 1)
        assert srv.requests[0].line == "closed"
        assert pool.stats() == (0, 0, 0)


async def test_dropped_response_gives_its_slot_back() -> None:
    async with serve(lambda c: answer_all(c, srv, lambda r: ok())) as srv, pooled(srv.url, limit=1) as pool:
        resp: H1Response | None = await get(pool, srv.url)
        assert pool.stats()[0] == 1
        del resp  # never closed: an exception between open and relay
        await until(lambda: pool.stats()[0] == 0)
        resp2 = await get(pool, srv.url, wait=1)
        resp2.close()


# ------------------------------------------------------------------------------------------------ forwarder


def ctx_for(server: ServerPolicy, outcomes: list[UpstreamOutcome]) -> RequestContext:
    ctx = RequestContext(
        request_id="r1",
        snapshot=None,  # type: ignore[arg-type]
        server_name="svc",
        server=server,
        client_ip="127.0.0.1",
        transport="streamable-http",
        http_method="POST",
        headers=CIMultiDict({"Content-Type": "application/json"}),
        body=b"{}",
    )
    ctx.outcome_hooks.append(outcomes.append)
    return ctx


async def forward(url: str, **policy: Any) -> tuple[BaseException | None, list[UpstreamOutcome]]:
    server = ServerPolicy.model_validate({"upstreams": [{"url": url}], **policy})
    pools = UpstreamPools()
    forwarder = HttpForwarder(pools, 15.0)
    outcomes: list[UpstreamOutcome] = []
    try:
        resp = await forwarder.open(ctx_for(server, outcomes), server, url, "POST")
        resp.close()
        return None, outcomes
    except Exception as exc:
        return exc, outcomes
    finally:
        await pools.close()


@contextlib.contextmanager
def unconnectable() -> Iterator[str]:
    """A URL whose TCP connect never completes: the listener's accept queue is full and nobody accepts."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_forwarder_classifies_connect_and_pool_wait_timeouts_as_never_delivered() -> None:
    with unconnectable() as url:
        exc, outcomes = await forward(url, timeouts={"connect": 0.3})
        assert isinstance(exc, UpstreamUnavailable) and exc.status == 502
        assert [o.error for o in outcomes] == ["connect"]

    release = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await release.wait()

    async with serve(handler) as srv:
        server = ServerPolicy.model_validate(
            {"upstreams": [{"url": srv.url}], "pool": {"max_connections": 1, "max_wait_seconds": 0.2}}
        )
        pools = UpstreamPools()
        forwarder = HttpForwarder(pools, 15.0)
        try:
            holder = asyncio.create_task(forwarder.open(ctx_for(server, []), server, srv.url, "POST"))
            await until(lambda: len(srv.conns) == 1)
            outcomes: list[UpstreamOutcome] = []
            with pytest.raises(UpstreamPoolExhausted) as waited:
                await forwarder.open(ctx_for(server, outcomes), server, srv.url, "POST")
            # still never-delivered (retryable, a subclass of UpstreamUnavailable), but told as the gateway's cap
            assert isinstance(waited.value, UpstreamUnavailable) and waited.value.status == 503
            assert waited.value.reason == "upstream_pool_exhausted" and waited.value.headers["Retry-After"] == "1"
            # the gateway's own cap: kind "pool", which breakers do not count (issue 15, item 2)
            assert [o.error for o in outcomes] == ["pool"]
            holder.cancel()
            await asyncio.gather(holder, return_exceptions=True)
        finally:
            release.set()
            await pools.close()


async def test_forwarder_classifies_reset_timeout_and_protocol() -> None:
    async def silent(conn: Conn) -> None:
        await conn.request()
        await asyncio.sleep(5)

    async with serve(silent) as srv:
        exc, outcomes = await forward(srv.url, timeouts={"first_byte": 0.2})
        assert isinstance(exc, UpstreamTimeout) and exc.status == 504
        assert [o.error for o in outcomes] == ["timeout"]

    async def hang_up(conn: Conn) -> None:
        await conn.request()

    async with serve(hang_up) as srv:
        exc, outcomes = await forward(srv.url)
        assert isinstance(exc, UpstreamUnavailable)
        assert [o.error for o in outcomes] == ["reset"]

    async def garbage(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"NOT HTTP\r\n\r\n")
        await asyncio.sleep(1)

    async with serve(garbage) as srv:
        exc, outcomes = await forward(srv.url)
        assert exc is not None and exc.status == 502  # type: ignore[attr-defined]
        assert [o.error for o in outcomes] == ["protocol"]


async def test_resilient_forwarder_retries_a_connect_timeout_on_another_instance() -> None:
    """Never delivered, so even a tools/call may go again: to the other instance, with a well-formed answer."""
    async with serve(lambda c: answer_all(c, srv, lambda r: ok())) as srv:
        with unconnectable() as dead:
            server = ServerPolicy.model_validate(
                {
                    "upstreams": [{"url": dead}, {"url": srv.url}],
                    "timeouts": {"connect": 0.3},
                    "retry": {"attempts": 1, "backoff_seconds": 0},
                }
            )
            pools = UpstreamPools()
            forwarder = ResilientForwarder(pools, 15.0, repick=lambda name, pol, tried: srv.url)
            outcomes: list[UpstreamOutcome] = []
            ctx = ctx_for(server, outcomes)
            try:
                resp = await forwarder.open(ctx, server, dead, "POST")
                assert resp.status == 200 and await read_all(resp) == b'{"ok":true}'
                resp.close()
            finally:
                await pools.close()
        assert ctx.notes["retries"] == 1 and ctx.upstream_url == srv.url
        assert [(o.error, o.status) for o in outcomes] == [("connect", None), (None, 200)]
        assert len(srv.requests) == 1


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def stream_ctx(server: ServerPolicy, tenant: str, method: str = "GET") -> RequestContext:
    ctx = ctx_for(server, [])
    ctx.http_method = method
    ctx.body = b""
    ctx.principal = Principal(tenant=tenant, subject=tenant, key_id=tenant)
    return ctx


async def test_streams_use_their_own_pool_and_an_evicted_one_ends_cleanly() -> None:
    """A GET holds a connection of the stream pool, never of the request pool; when the stream pool is full, a
    tenant under its share takes the newest stream of the biggest holder, whose reader sees a normal end after the
    bytes already received, and whose upstream connection is closed at once."""

    async def handler(conn: Conn) -> None:
        while (req := await conn.request()) is not None:
            if req.line.startswith("GET"):
                await conn.send(SSE_HEAD + b"12\r\nevent: a\ndata: 1\n\n\r\n")
                await conn.closed_by_peer()  # an idle stream: nothing more until the gateway lets go
                return
            await conn.send(ok())

    async with serve(handler) as srv:
        server = ServerPolicy.model_validate(
            {"upstreams": [{"url": srv.url}], "pool": {"max_connections": 1, "max_streams": 2, "max_wait_seconds": 1}}
        )
        pools = UpstreamPools()
        forwarder = HttpForwarder(pools, 15.0)
        try:
            hog_ctx = [stream_ctx(server, "hog") for _ in range(2)]
            hog = [await forwarder.open(c, server, srv.url, "GET") for c in hog_ctx]
            # two idle streams and a request pool of one: calls still get their connection at once, twice over
            for _ in range(2):
                resp = await forwarder.open(ctx_for(server, []), server, srv.url, "POST")
                assert await read_all(resp) == b'{"ok":true}'
                resp.close()
            with pytest.raises(ConcurrencyLimited) as refused:
                await forwarder.open(stream_ctx(server, "hog"), server, srv.url, "GET")
            assert refused.value.reason == "stream_share_exceeded" and refused.value.stage == "ratelimit"
            assert refused.value.data == {"limit": "upstream_streams", "retryAfterSeconds": 5}

            small = await forwarder.open(stream_ctx(server, "small"), server, srv.url, "GET")
            assert await read_all(hog[1]) == b"event: a\ndata: 1\n\n"  # then a normal end, no body error
            assert hog_ctx[1].notes["stream_ended"] == "stream_share"
            assert "stream_ended" not in hog_ctx[0].notes
            await until(lambda: len(srv.ended) == 1)  # the evicted stream's upstream connection was closed
            assert (await small.content.readany()).startswith(b"event: a")
            sp, _ = pools.streams(srv.url, server.pool)
            assert (sp.budget.held("hog"), sp.budget.held("small")) == (1, 1)
            for c in hog_ctx:  # the requests end: their slots come back once, the evicted one's not twice
                for release in c.releases:
                    release()
            assert sp.budget.open == 1
        finally:
            await pools.close()


async def test_a_discarded_retry_attempt_gives_its_stream_slot_back() -> None:
    """A GET answered 503 is retried (read-only); the attempt's stream slot is returned first, so a stream pool of
    one still admits the retry."""
    served = 0

    async def handler(conn: Conn) -> None:
        nonlocal served
        while (req := await conn.request()) is not None:
            served += 1
            if served == 1:
                await conn.send(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
                continue
            assert req.line.startswith("GET")
            await conn.send(SSE_HEAD)
            await conn.closed_by_peer()
            return

    async with serve(handler) as srv:
        server = ServerPolicy.model_validate(
            {"upstreams": [{"url": srv.url}], "pool": {"max_streams": 1}, "retry": {"backoff_seconds": 0}}
        )
        pools = UpstreamPools()
        forwarder = ResilientForwarder(pools, 15.0)
        try:
            ctx = stream_ctx(server, "t")
            resp = await forwarder.open(ctx, server, srv.url, "GET")
            assert resp.status == 200 and served == 2 and ctx.notes["retries"] == 1
            sp, _ = pools.streams(srv.url, server.pool)
            assert sp.budget.open == 1 and len(ctx.releases) == 1
            resp.close()
            ctx.releases.pop()()
            assert sp.budget.open == 0
        finally:
            await pools.close()
