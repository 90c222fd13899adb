"""The lean HTTP/1.1 server's pure parts (gateway/net/h1server.py): the response head, FastResponse's framing on a
fake transport, and the routing of a request line."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.http import SERVER_SOFTWARE

from gateway.net.frontdoor import BodyTimeout
from gateway.net.h1server import FastBody, FastProtocol, FastResponse, response_head

pytestmark = pytest.mark.unit


def head_lines(head: bytes) -> list[str]:
    text = head.decode()
    assert text.endswith("\r\n\r\n"), text
    return text[:-4].split("\r\n")


def names(head: bytes) -> list[str]:
    return [line.split(":", 1)[0].lower() for line in head_lines(head)[1:]]


# ------------------------------------------------------------------------------------------ response_head


def test_response_head_status_line_and_headers_in_order() -> None:
    head = response_head(200, "OK", {"Content-Type": "application/json", "Content-Length": "2"}, close=False)
    lines = head_lines(head)
    assert lines[0] == "HTTP/1.1 200 OK"
    assert lines[1:3] == ["Content-Type: application/json", "Content-Length: 2"]
    assert names(head) == ["content-type", "content-length", "date", "server"]
    assert f"Server: {SERVER_SOFTWARE}" in lines
    date = next(line for line in lines if line.startswith("Date: "))
    assert date.endswith(" GMT")
    assert "connection" not in names(head)


def test_response_head_keeps_a_given_date_and_server() -> None:
    given = {"Date": "Mon, 01 Jan 2024 00:00:00 GMT", "Server": "custom/1"}
    head = response_head(404, "Not Found", given, close=False)
    lines = head_lines(head)
    assert lines[0] == "HTTP/1.1 404 Not Found"
    assert names(head).count("date") == 1 and names(head).count("server") == 1
    assert "Date: Mon, 01 Jan 2024 00:00:00 GMT" in lines
    assert "Server: custom/1" in lines


def test_response_head_connection_close_only_when_asked() -> None:
    closed = response_head(200, "OK", {"Content-Length": "0"}, close=True)
    assert head_lines(closed)[-1] == "Connection: close"
    assert names(closed).count("connection") == 1
    assert "connection" not in names(response_head(200, "OK", {"Content-Length": "0"}, close=False))


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-A": "1\r\nSet-Cookie: evil=1"}, id="crlf-in-value"),
        pytest.param({"X-A": "1\nX-B: 2"}, id="lf-in-value"),
        pytest.param({"X-A": "1\rX-B: 2"}, id="cr-in-value"),
        pytest.param({"X-A\r\nX-B": "1"}, id="crlf-in-name"),
        pytest.param({"X-A\n": "1"}, id="lf-in-name"),
        pytest.param({"X\rA": "1"}, id="cr-in-name"),
    ],
)
def test_response_head_refuses_header_injection(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        response_head(200, "OK", headers, close=False)


@pytest.mark.parametrize("reason", ["OK\r\nX-Evil: 1", "OK\n", "O\rK"])
def test_response_head_refuses_newlines_in_the_reason(reason: str) -> None:
    with pytest.raises(ValueError):
        response_head(200, reason, {}, close=False)


# ------------------------------------------------------------------------------------------ FastResponse


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing


class FakeServer:
    def __init__(self, transports: dict[str, str | None] | None = None) -> None:
        self.prepared: list[tuple[Any, Any]] = []
        self.transports = transports or {}
        self.asked: list[str] = []

    async def on_prepare(self, request: Any, response: Any) -> None:
        self.prepared.append((request, response))

    def route_transport(self, name: str) -> str | None:
        self.asked.append(name)
        return self.transports.get(name)


class FakeConn:
    def __init__(self, closing: bool = False) -> None:
        self.transport = FakeTransport()
        self.server = FakeServer()
        self.closing = closing
        self.write_paused = False
        self.response_started = False

    async def drain(self) -> None:  # pragma: no cover - only when write_paused
        raise AssertionError("not paused")


def make(conn: FakeConn, headers: dict[str, str] | None = None, status: int = 200) -> FastResponse:
    return FastResponse(conn, status=status, reason=None, headers=headers)  # type: ignore[arg-type]


def split(data: bytes) -> tuple[bytes, bytes]:
    end = data.index(b"\r\n\r\n") + 4
    return data[:end], data[end:]


async def test_head_goes_out_with_the_first_body_write() -> None:
    conn = FakeConn()
    resp = make(conn, {"Content-Type": "application/json", "Content-Length": "7"})
    request = object()
    await resp.prepare(request)
    assert resp.prepared and conn.response_started
    assert conn.server.prepared == [(request, resp)]
    assert conn.transport.writes == []  # the head waits for the body
    await resp.write(b'{"a":1}')
    assert len(conn.transport.writes) == 1
    head, body = split(conn.transport.writes[0])
    assert head_lines(head)[0] == "HTTP/1.1 200 OK"
    assert "transfer-encoding" not in names(head)
    assert body == b'{"a":1}'
    await resp.write_eof()
    assert len(conn.transport.writes) == 1  # nothing more with a Content-Length
    assert "Transfer-Encoding" not in resp.headers


async def test_prepare_twice_signals_once() -> None:
    conn = FakeConn()
    resp = make(conn, {"Content-Length": "1"})
    await resp.prepare(object())
    await resp.prepare(object())
    assert len(conn.server.prepared) == 1
    await resp.write(b"x")
    await resp.write(b"")  # empty writes are nothing
    assert len(conn.transport.writes) == 1


async def test_chunked_framing_without_content_length() -> None:
    conn = FakeConn()
    resp = make(conn, {"Content-Type": "text/event-stream"})
    await resp.prepare(object())
    first = b"event: message\r\ndata: {}\r\n\r\n"
    second = b"x" * 300
    await resp.write(first)
    await resp.write(bytearray(second))
    await resp.write_eof()
    writes = conn.transport.writes
    assert len(writes) == 3
    head, body = split(writes[0])
    assert "Transfer-Encoding: chunked" in head_lines(head)
    assert "content-length" not in names(head)
    assert body == b"%x\r\n" % len(first) + first + b"\r\n"
    assert writes[1] == b"12c\r\n" + second + b"\r\n"
    assert writes[2] == b"0\r\n\r\n"


async def test_write_eof_without_body_sends_the_head_once() -> None:
    conn = FakeConn()
    resp = make(conn, {"Content-Length": "0"}, status=202)
    await resp.prepare(object())
    await resp.write_eof()
    await resp.write_eof()  # a second end is nothing
    assert len(conn.transport.writes) == 1
    head, rest = split(conn.transport.writes[0])
    assert head_lines(head)[0] == "HTTP/1.1 202 Accepted"
    assert rest == b""


async def test_write_eof_without_body_chunked_sends_head_and_tail_once() -> None:
    conn = FakeConn()
    resp = make(conn, {"Content-Type": "text/event-stream"})
    await resp.prepare(object())
    await resp.write_eof()
    await resp.write_eof()
    assert len(conn.transport.writes) == 1
    head, rest = split(conn.transport.writes[0])
    assert "Transfer-Encoding: chunked" in head_lines(head)
    assert rest == b"0\r\n\r\n"


async def test_write_eof_with_data() -> None:
    conn = FakeConn()
    resp = make(conn, {"Content-Length": "3"})
    await resp.prepare(object())
    await resp.write_eof(b"abc")
    assert len(conn.transport.writes) == 1
    assert split(conn.transport.writes[0])[1] == b"abc"


async def test_write_after_write_eof_raises() -> None:
    conn = FakeConn()
    resp = make(conn, {"Content-Length": "1"})
    await resp.prepare(object())
    await resp.write(b"a")
    await resp.write_eof()
    with pytest.raises(RuntimeError):
        await resp.write(b"b")
    assert len(conn.transport.writes) == 1


async def test_write_before_prepare_raises() -> None:
    conn = FakeConn()
    resp = make(conn, {"Content-Length": "1"})
    with pytest.raises(RuntimeError):
        await resp.write(b"a")
    assert conn.transport.writes == []


async def test_write_to_a_closing_transport_raises() -> None:
    conn = FakeConn()
    resp = make(conn, {"Content-Length": "1"})
    await resp.prepare(object())
    conn.transport.closing = True
    with pytest.raises(ConnectionResetError):
        await resp.write(b"a")
    assert conn.transport.writes == []


async def test_connection_close_when_the_connection_is_closing() -> None:
    conn = FakeConn(closing=True)
    resp = make(conn, {"Content-Length": "1"})
    await resp.prepare(object())
    await resp.write(b"a")
    head, _ = split(conn.transport.writes[0])
    assert "Connection: close" in head_lines(head)
    open_conn = FakeConn(closing=False)
    resp2 = make(open_conn, {"Content-Length": "1"})
    await resp2.prepare(object())
    await resp2.write(b"a")
    assert "connection" not in names(split(open_conn.transport.writes[0])[0])


# ------------------------------------------------------------------------------------------ FastProtocol._route


def protocol(transports: dict[str, str | None] | None = None) -> tuple[FastProtocol, FakeServer]:
    server = FakeServer(transports)
    return FastProtocol(server), server  # type: ignore[arg-type]


def test_route_accepts_a_plain_post() -> None:
    proto, server = protocol({"example": "streamable-http"})
    assert proto._route(b"POST /mcp/example HTTP/1.1") == ("POST", "example")
    assert server.asked == ["example"]


def test_route_accepts_a_session_get_stream() -> None:
    # a GET stream must not lose the race against the POST sent right after it (issue 16)
    proto, _ = protocol({"example": "streamable-http"})
    assert proto._route(b"GET /mcp/example HTTP/1.1") == ("GET", "example")


def test_route_accepts_unknown_names() -> None:
    # no such server: the handler answers 404 in the gateway's format
    proto, _ = protocol({})
    assert proto._route(b"POST /mcp/nosuch HTTP/1.1") == ("POST", "nosuch")
    assert proto._route(b"POST /mcp/a-b_c.d~1 HTTP/1.1") == ("POST", "a-b_c.d~1")


@pytest.mark.parametrize(
    "line",
    [
        b"POST /mcp/a/b HTTP/1.1",
        b"POST /mcp/example/ HTTP/1.1",
        b"POST /mcp/example?x=1 HTTP/1.1",
        b"POST /mcp/ex%61mple HTTP/1.1",
        b"POST /mcp/example#frag HTTP/1.1",
        b"POST /mcp/ HTTP/1.1",
        b"POST /mcp/a b HTTP/1.1",
        b"POST /mcp/ex\xc3\xa9 HTTP/1.1",
        b"POST /mcp/ex\x7fample HTTP/1.1",
        b"GET /mcp/example/sse HTTP/1.1",
        b"GET /mcp/example?x=1 HTTP/1.1",
        b"get /mcp/example HTTP/1.1",
        b"HEAD /mcp/example HTTP/1.1",
        b"DELETE /mcp/example HTTP/1.1",
        b"PUT /mcp/example HTTP/1.1",
        b"post /mcp/example HTTP/1.1",
        b"POST /mcp/example HTTP/1.0",
        b"POST /mcp/example HTTP/2.0",
        b"POST /mcp/example",
        b"POST /other/example HTTP/1.1",
        b"POST /mcpexample HTTP/1.1",
    ],
)
def test_route_refuses_other_shapes(line: bytes) -> None:
    proto, _ = protocol({"example": "streamable-http"})
    assert proto._route(line) is None


@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_route_refuses_non_streamable_routes(transport: str) -> None:
    proto, server = protocol({"legacy": transport, "example": "streamable-http"})
    assert proto._route(b"POST /mcp/legacy HTTP/1.1") is None
    assert proto._route(b"GET /mcp/legacy HTTP/1.1") is None  # a legacy SSE stream or a WebSocket: aiohttp's
    assert server.asked == ["legacy", "legacy"]
    assert proto._route(b"POST /mcp/example HTTP/1.1") == ("POST", "example")


# ------------------------------------------------------------------------------------------ FastProtocol._parse_head


def parse(head: bytes, method: str = "POST") -> tuple[Any, int | None, bool] | None:
    proto, server = protocol({"example": "streamable-http"})
    server.max_body_bytes = 1000  # type: ignore[attr-defined]
    return proto._parse_head(head, method)


def test_parse_head_of_a_get_stream_has_no_body() -> None:
    get = b"GET /mcp/example HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n"
    for extra in (b"", b"Content-Length: 0\r\n"):
        parsed = parse(get + extra + b"\r\n", "GET")
        assert parsed is not None and parsed[1:] == (None, True)
    # a GET with a body, a WebSocket upgrade or no Host: aiohttp's
    assert parse(get + b"Content-Length: 5\r\n\r\n", "GET") is None
    upgrade = b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert parse(get + upgrade, "GET") is None
    assert parse(b"GET /mcp/example HTTP/1.1\r\n\r\n", "GET") is None


def test_parse_head_keeps_connection_close_of_a_bodiless_request() -> None:
    # httptools resets once a message without a body is complete: keep-alive must be read before that
    parsed = parse(b"POST /mcp/example HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert parsed is not None
    assert parsed[1:] == (0, False)
    kept = parse(b"POST /mcp/example HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert kept is not None and kept[1:] == (0, True)


@pytest.mark.parametrize("upgrade", [b"Upgrade: h2c\r\n", b"Upgrade: websocket\r\n"])
def test_parse_head_hands_over_an_upgrade_instead_of_raising(upgrade: bytes) -> None:
    # httptools raises HttpParserUpgrade, which is not an HttpParserError, for an upgrade with a body
    head = b"POST /mcp/example HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n" + upgrade + b"Content-Length: 2\r\n\r\n"
    assert parse(head) is None


@pytest.mark.parametrize("hosts", [b"", b"Host: a\r\nHost: b\r\n"], ids=["none", "two"])
def test_parse_head_hands_over_without_exactly_one_host(hosts: bytes) -> None:
    assert parse(b"POST /mcp/example HTTP/1.1\r\n" + hosts + b"Content-Length: 2\r\n\r\n") is None


# ------------------------------------------------------------------------------------------ FastBody


async def test_pending_body_is_waited_for_then_given_once() -> None:
    body = FastBody(b"", pending=True)
    reader = asyncio.ensure_future(body.readany())
    await asyncio.sleep(0)
    assert not reader.done()
    body.feed(b"abc")
    assert await reader == b"abc"
    assert await body.readany() == b""
    assert not body.pending


async def test_a_late_body_fails_its_reader() -> None:
    body = FastBody(b"", pending=True)
    reader = asyncio.ensure_future(body.readany())
    await asyncio.sleep(0)
    body.fail(BodyTimeout())
    with pytest.raises(BodyTimeout):
        await reader
    with pytest.raises(BodyTimeout):
        await body.readany()
