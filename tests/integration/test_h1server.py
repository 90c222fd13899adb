"""The lean HTTP/1.1 server (gateway/net/h1server.py) against a real gateway process and an SDK upstream.

Requests are written on raw sockets so that the bytes on the wire (splits, pipelining, malformed heads) are what
the test says. Read timeouts only guard against a hang; no duration is asserted. The handover counter
(`mcp_gateway_lean_handovers_total`) is read over one dedicated keep-alive connection, which is itself handed to
aiohttp once (its first GET) and then never again, so every later change of the counter is the test's doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from tests.harness import Gateway, Upstream, default_policies, running, start_gateway, start_upstream

pytestmark = pytest.mark.integration

KEY = "k1"
GUARD = 15.0  # a hang guard, never a timing assertion
MAX_BODY = 1024
HANDOVERS = "mcp_gateway_lean_handovers_total"
PROTOCOL = "2025-06-18"
STATUS_LINE = re.compile(r"^HTTP/(1\.[01]) (\d{3}) (.*)$")


def rpc(method: str, id_: int | None, params: dict[str, Any] | None = None) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if id_ is not None:
        msg["id"] = id_
    if params is not None:
        msg["params"] = params
    return json.dumps(msg).encode()


def init(id_: int) -> bytes:
    return rpc(
        "initialize",
        id_,
        {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    )


def post(
    gw: Gateway,
    body: bytes,
    *,
    auth: bool = True,
    extra: dict[str, str] | None = None,
    server: str = "example",
) -> bytes:
    """A complete `POST /mcp/{server}` with a Content-Length body."""
    headers = {
        "Host": f"127.0.0.1:{gw.port}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
    }
    if auth:
        headers.update(gw.auth(KEY))
    headers.update(extra or {})
    head = f"POST /mcp/{server} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


def get(gw: Gateway, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode()


@dataclass
class Resp:
    version: str
    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes

    def messages(self) -> list[dict[str, Any]]:
        """The JSON-RPC messages of the body (a JSON document or an event stream's `data:` lines)."""
        if self.headers.get("Content-Type", "").startswith("text/event-stream"):
            return [json.loads(line[5:]) for line in self.body.decode().splitlines() if line.startswith("data:")]
        doc = json.loads(self.body)
        return doc if isinstance(doc, list) else [doc]

    def message(self) -> dict[str, Any]:
        msgs = self.messages()
        assert len(msgs) == 1, msgs
        return msgs[0]


async def read_response(reader: asyncio.StreamReader, version: str = "1.1") -> Resp:
    """One HTTP response, checked for well-formedness: status line (of `version`), `name: value` headers, one
    framing. aiohttp answers a head its parser refuses with `HTTP/1.0 400`, hence the parameter."""
    async with asyncio.timeout(GUARD):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        m = STATUS_LINE.match(lines[0])
        assert m is not None, f"malformed status line {lines[0]!r}"
        assert m.group(1) == version, f"HTTP/{version} expected: {lines[0]!r}"
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            assert sep and name and name == name.strip(), f"malformed header line {line!r}"
            headers.add(name, value.strip())
        length = headers.getall("Content-Length", [])
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        assert len(length) <= 1, f"several Content-Length headers: {length}"
        assert not (length and chunked), "both Content-Length and chunked framing"
        status = int(m.group(2))
        if 100 <= status < 200 or status in (204, 304):
            body = b""  # no body, whatever the headers
        elif length:
            body = await reader.readexactly(int(length[0]))
        elif chunked:
            parts = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                chunk = await reader.readexactly(size + 2)
                assert chunk.endswith(b"\r\n"), f"chunk not ended by CRLF: {chunk[-10:]!r}"
                if size == 0:
                    break
                parts.append(chunk[:-2])
            body = b"".join(parts)
        else:
            body = await reader.read()  # delimited by the end of the connection
    return Resp(m.group(1), status, m.group(3), headers, body)


async def at_eof(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed its side (EOF or reset), with no further bytes before that."""
    try:
        async with asyncio.timeout(GUARD):
            rest = await reader.read()
    except ConnectionError:
        return True
    assert rest == b"", f"unexpected bytes after the answer: {rest[:200]!r}"
    return True


class Client:
    """One raw keep-alive connection to the gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, *pieces: bytes, pause: float = 0.0) -> None:
        for i, piece in enumerate(pieces):
            self.writer.write(piece)
            await self.writer.drain()
            if pause and i < len(pieces) - 1:
                await asyncio.sleep(pause)

    async def exchange(self, data: bytes, version: str = "1.1") -> Resp:
        await self.send(data)
        return await read_response(self.reader, version)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def connect(gw: Gateway) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    return Client(reader, writer)


@contextlib.asynccontextmanager
async def connected(gw: Gateway) -> AsyncIterator[Client]:
    """A raw connection to the gateway, closed when the block ends."""
    c = await connect(gw)
    try:
        yield c
    finally:
        await c.close()


async def session(gw: Gateway, client: Client, id_: int = 1) -> str:
    """initialize + notifications/initialized on `client`; the session id."""
    r = await client.exchange(post(gw, init(id_)))
    assert r.status == 200, (r, r.body)
    assert r.message()["id"] == id_
    sid = r.headers["Mcp-Session-Id"]
    r2 = await client.exchange(post(gw, rpc("notifications/initialized", None), extra=session_headers(sid)))
    assert r2.status == 202, (r2, r2.body)
    return sid


def session_headers(sid: str) -> dict[str, str]:
    return {"Mcp-Session-Id": sid, "MCP-Protocol-Version": PROTOCOL}


@dataclass
class Env:
    gw: Gateway
    upstream: Upstream
    metrics: Client | None = None

    async def handovers(self) -> float:
        """The counter, read over the one metrics connection (handed over at its first use, never again)."""
        if self.metrics is None or self.metrics.writer.is_closing():
            self.metrics = await connect(self.gw)
        r = await self.metrics.exchange(get(self.gw, "/metrics"))
        assert r.status == 200, r
        m = re.search(rf"^{HANDOVERS} (\S+)$", r.body.decode(), re.MULTILINE)
        assert m is not None, f"{HANDOVERS} missing from /metrics"
        return float(m.group(1))


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = start_upstream(tmp_path_factory.mktemp("h1server-up"), json_response=True)
    with running(up):
        yield up


def gateway(workdir: Path, upstream: Upstream, http: dict[str, Any]) -> Gateway:
    return start_gateway(
        workdir,
        default_policies(upstream.url),
        keys={KEY: {"tenant": "acme", "scopes": ["read", "write"]}},
        config={"http": http},
    )


@pytest.fixture(scope="module")
def lean_gw(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("h1server-gw")
    streaming = start_upstream(work)  # answers POSTs with event streams: the lean path's chunked answers
    legacy = start_upstream(work, transport="sse")  # a route whose transport is not Streamable HTTP
    with running(streaming, legacy):
        policies = default_policies(upstream.url)
        policies["servers.yaml"]["servers"]["streaming"] = {"upstreams": [{"url": streaming.url}], "owner": "acme"}
        policies["servers.yaml"]["servers"]["legacy"] = {
            "upstreams": [{"url": legacy.url}],
            "owner": "acme",
            "transport": "sse",
        }
        policies["tenants.yaml"]["tenants"]["acme"]["servers"] += ["streaming", "legacy"]
        gw = start_gateway(
            work / "gw",
            policies,
            keys={KEY: {"tenant": "acme", "scopes": ["read", "write"]}},
            config={"http": {"max_body_bytes": MAX_BODY}},
        )
        with running(gw):
            yield gw


@pytest.fixture
async def env(lean_gw: Gateway, upstream: Upstream) -> AsyncIterator[Env]:
    e = Env(lean_gw, upstream)
    await e.handovers()  # the metrics connection's own handover happens here, before the test counts
    yield e
    if e.metrics is not None:
        await e.metrics.close()


# ------------------------------------------------------------------------------------------ the lean path


async def test_two_posts_on_one_keepalive_connection(env: Env) -> None:
    gw = env.gw
    before = await env.handovers()
    async with connected(gw) as c:
        r1 = await c.exchange(post(gw, init(1)))
        assert r1.status == 200, r1.body
        assert r1.message()["id"] == 1
        assert r1.message()["result"]["protocolVersion"]
        assert "Date" in r1.headers and "Server" in r1.headers
        assert r1.headers.get("Connection", "").lower() != "close"
        sid = r1.headers["Mcp-Session-Id"]
        r2 = await c.exchange(post(gw, rpc("ping", 2), extra=session_headers(sid)))
        assert r2.status == 200, r2.body
        assert r2.message() == {"jsonrpc": "2.0", "id": 2, "result": {}}
    assert await env.handovers() == before


async def test_pipelined_posts_answered_in_order(env: Env) -> None:
    gw = env.gw
    before = await env.handovers()
    async with connected(gw) as c:
        sid = await session(gw, c)
        sh = session_headers(sid)
        await c.send(post(gw, rpc("ping", 11), extra=sh) + post(gw, rpc("tools/list", 12), extra=sh))
        first = await read_response(c.reader)
        second = await read_response(c.reader)
        assert (first.status, second.status) == (200, 200), (first.body, second.body)
        assert first.message() == {"jsonrpc": "2.0", "id": 11, "result": {}}
        assert second.message()["id"] == 12
        assert "tools" in second.message()["result"]
    assert await env.handovers() == before


async def test_head_and_body_split_across_writes(env: Env) -> None:
    gw = env.gw
    before = await env.handovers()
    data = post(gw, init(7))
    head_end = data.index(b"\r\n\r\n") + 4
    head, body = data[:head_end], data[head_end:]
    # the first piece ends inside "POST /mc", the second inside a header, the third is the rest of the head
    cuts = [6, head.index(b"Content-Type") + 5]
    pieces = [head[: cuts[0]], head[cuts[0] : cuts[1]], head[cuts[1] :], body[:10], body[10:]]
    async with connected(gw) as c:
        await c.send(*pieces, pause=0.05)
        r = await read_response(c.reader)
        assert r.status == 200, r.body
        assert r.message()["id"] == 7
        # still the lean path's connection: the next request works too
        r2 = await c.exchange(post(gw, init(8)))
        assert r2.status == 200 and r2.message()["id"] == 8
    assert await env.handovers() == before


async def test_connection_close_is_honoured(env: Env) -> None:
    gw = env.gw
    async with connected(gw) as c:
        r = await c.exchange(post(gw, init(21), extra={"Connection": "close"}))
        assert r.status == 200, r.body
        assert r.message()["id"] == 21
        assert r.headers.get("Connection", "").lower() == "close"
        assert await at_eof(c.reader)


async def test_refusal_on_the_lean_path_is_well_formed(env: Env) -> None:
    gw = env.gw
    before = await env.handovers()
    async with connected(gw) as c:
        r = await c.exchange(post(gw, init(31), auth=False))
        assert r.status == 401, r.body
        err = r.message()
        assert err["jsonrpc"] == "2.0" and isinstance(err["error"]["code"], int)
        assert r.headers.get("X-Request-ID")
        assert r.headers.get("Connection", "").lower() != "close"
        # the connection is still usable
        r2 = await c.exchange(post(gw, init(32)))
        assert r2.status == 200, r2.body
        assert r2.message()["id"] == 32
    assert await env.handovers() == before
    # the same refusal from aiohttp (a query string sends the request there) has the same headers and body
    # (an API-key route: both carry the `ApiKey` challenge of gateway/filters/authn.py)
    async with connected(gw) as c2:
        data = post(gw, init(31), auth=False).replace(b"/mcp/example ", b"/mcp/example?via=aiohttp ", 1)
        ref = await c2.exchange(data)
    assert ref.status == 401
    assert {k.lower() for k in r.headers} == {k.lower() for k in ref.headers}
    assert r.headers["Content-Type"] == ref.headers["Content-Type"]
    assert r.message() == ref.message()


# ------------------------------------------------------------------------------------------ handovers to aiohttp


async def test_get_after_post_hands_the_connection_over(env: Env) -> None:
    gw = env.gw
    before = await env.handovers()
    async with connected(gw) as c:
        r1 = await c.exchange(post(gw, init(41)))
        assert r1.status == 200 and r1.message()["id"] == 41
        r2 = await c.exchange(get(gw, "/healthz"))
        assert r2.status == 200
        assert json.loads(r2.body)["status"] == "ok"
        assert await env.handovers() == before + 1
        # the same connection, now aiohttp's: a POST still works and nothing is handed over again
        r3 = await c.exchange(post(gw, init(42)))
        assert r3.status == 200, r3.body
        assert r3.message()["id"] == 42
    assert await env.handovers() == before + 1


async def test_chunked_post_is_served_by_aiohttp(env: Env) -> None:
    gw = env.gw
    before = await env.handovers()
    body = init(51)
    data = post(gw, b"")
    head = data[: data.index(b"\r\n\r\n") + 2].replace(b"Content-Length: 0\r\n", b"")
    assert b"Content-Length" not in head
    chunked = b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (20, body[:20], len(body) - 20, body[20:])
    async with connected(gw) as c:
        r = await c.exchange(head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
        assert r.status == 200, r.body
        assert r.message()["id"] == 51
    assert await env.handovers() == before + 1


async def test_body_over_the_cap_is_refused_with_413(env: Env) -> None:
    gw = env.gw
    before = await env.handovers()
    params = {
        "protocolVersion": PROTOCOL,
        "capabilities": {},
        "clientInfo": {"name": "x" * (MAX_BODY + 100), "version": "1"},
    }
    body = rpc("initialize", 61, params)
    assert len(body) > MAX_BODY
    async with connected(gw) as c:
        r = await c.exchange(post(gw, body))
        assert r.status == 413, (r, r.body)
        err = r.message()
        assert err["jsonrpc"] == "2.0" and isinstance(err["error"]["code"], int)
    assert await env.handovers() == before + 1


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b"X-No-Colon-Here\r\n", id="header-without-colon"),
        pytest.param(b"Content-Length: abc\r\n", id="content-length-abc"),
        pytest.param(b"Content-Length: 5\r\n", id="duplicate-content-length"),
    ],
)
async def test_malformed_head_gets_a_400_from_aiohttp(env: Env, bad: bytes) -> None:
    gw = env.gw
    before = await env.handovers()
    data = post(gw, init(71))
    end = data.index(b"\r\n\r\n") + 2
    if bad.startswith(b"Content-Length: abc"):
        data = data.replace(b"Content-Length: %d\r\n" % len(init(71)), b"")
        end = data.index(b"\r\n\r\n") + 2
    async with connected(gw) as c:
        r = await c.exchange(data[:end] + bad + data[end:], version="1.0")
        assert r.status == 400, (r, r.body)
        assert await at_eof(c.reader)  # aiohttp closes after a refused head
    assert await env.handovers() == before + 1


async def test_unknown_server_answered_404_on_the_lean_path(env: Env) -> None:
    gw = env.gw
    before = await env.handovers()
    async with connected(gw) as c:
        r = await c.exchange(post(gw, init(91), server="nosuchserver"))
        assert r.status == 404, r.body
        assert r.message()["jsonrpc"] == "2.0"
        r2 = await c.exchange(post(gw, init(92)))
        assert r2.status == 200 and r2.message()["id"] == 92
    assert await env.handovers() == before


async def test_event_stream_answer_is_chunked_on_the_lean_path(env: Env) -> None:
    gw = env.gw
    before = await env.handovers()
    async with connected(gw) as c:
        r = await c.exchange(post(gw, init(111), server="streaming"))
        assert r.status == 200, r.body
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers.get("Transfer-Encoding", "").lower() == "chunked"  # read_response checked the framing
        assert r.message()["id"] == 111
        sid = r.headers["Mcp-Session-Id"]
        sh = session_headers(sid)
        note = await c.exchange(post(gw, rpc("notifications/initialized", None), extra=sh, server="streaming"))
        assert note.status == 202, note.body
        r2 = await c.exchange(post(gw, rpc("ping", 112), extra=sh, server="streaming"))
        assert r2.status == 200, r2.body
        assert r2.message() == {"jsonrpc": "2.0", "id": 112, "result": {}}
    assert await env.handovers() == before


def stream_get(gw: Gateway, sid: str, server: str = "streaming", body: bytes = b"") -> bytes:
    """A session's standalone `GET /mcp/{server}` event stream request."""
    headers = {
        "Host": f"127.0.0.1:{gw.port}",
        "Accept": "text/event-stream",
        **gw.auth(KEY),
        **session_headers(sid),
    }
    if body:
        headers["Content-Length"] = str(len(body))
    head = f"GET /mcp/{server} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


async def test_session_get_stream_is_served_on_the_lean_path(env: Env) -> None:
    """The GET stream is not handed to aiohttp: it must not lose the race against the POST sent right after it
    (issue 16)."""
    gw = env.gw
    before = await env.handovers()
    async with connected(gw) as c, connected(gw) as s:
        r = await c.exchange(post(gw, init(141), server="streaming"))
        assert r.status == 200, r.body
        sid = r.headers["Mcp-Session-Id"]
        note = await c.exchange(
            post(gw, rpc("notifications/initialized", None), extra=session_headers(sid), server="streaming")
        )
        assert note.status == 202, note.body
        await s.send(stream_get(gw, sid))
        async with asyncio.timeout(GUARD):
            head = (await s.reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        assert head.startswith("http/1.1 200 "), head
        assert "content-type: text/event-stream" in head and "transfer-encoding: chunked" in head, head
        # the session still works while its stream is open
        r2 = await c.exchange(post(gw, rpc("ping", 142), extra=session_headers(sid), server="streaming"))
        assert r2.status == 200 and r2.message() == {"jsonrpc": "2.0", "id": 142, "result": {}}
    assert await env.handovers() == before


async def test_get_refusal_on_the_lean_path_is_well_formed(env: Env) -> None:
    gw = env.gw
    before = await env.handovers()
    async with connected(gw) as c:
        data = stream_get(gw, "no-such-session", server="example").replace(b"Authorization: Bearer ", b"X-Not: ", 1)
        r = await c.exchange(data)
        assert r.status == 401, r.body
        assert r.message()["jsonrpc"] == "2.0" and isinstance(r.message()["error"]["code"], int)
        r2 = await c.exchange(stream_get(gw, "no-such-session", server="example"))
        assert r2.status == 404, r2.body  # an unknown session, on the same (still lean) connection
    assert await env.handovers() == before


async def test_get_with_a_body_is_handed_over(env: Env) -> None:
    gw = env.gw
    before = await env.handovers()
    async with connected(gw) as c:
        r = await c.exchange(stream_get(gw, "no-such-session", server="example", body=b"hello"))
        assert r.status == 404, r.body
    assert await env.handovers() == before + 1


FILLER = b"".join(f"X-Filler-{i}: {'v' * 1000}\r\n".encode() for i in range(40))
assert len(FILLER) > 32 * 1024


@pytest.mark.parametrize(
    ("change", "version"),
    [
        pytest.param((b" HTTP/1.1\r\n", b" HTTP/1.0\r\nConnection: keep-alive\r\n"), "1.0", id="http-1.0"),
        pytest.param((b"Accept:", b"Expect: 100-continue\r\nAccept:"), "1.1", id="expect"),
        pytest.param((b"/mcp/example ", b"/mcp/ex%61mple "), "1.1", id="percent-escape"),
        pytest.param((b"/mcp/example ", b"/mcp/example?x=1 "), "1.1", id="query-string"),
        # a head over the lean server's 32 KiB limit, each line well under aiohttp's field limit
        pytest.param((b"Accept:", FILLER + b"Accept:"), "1.1", id="head-over-32-kib"),
    ],
)
async def test_other_request_shapes_are_handed_over_and_served(
    env: Env, change: tuple[bytes, bytes], version: str
) -> None:
    gw = env.gw
    before = await env.handovers()
    data = post(gw, init(121)).replace(change[0], change[1], 1)
    assert data != post(gw, init(121))
    async with connected(gw) as c:
        if change[1].startswith(b"Expect"):
            # the head alone first: the body follows the interim answer, as a client of Expect does
            end = data.index(b"\r\n\r\n") + 4
            await c.send(data[:end])
            interim = await read_response(c.reader)
            assert interim.status == 100
            data = data[end:]
        await c.send(data)
        r = await read_response(c.reader, version)
        assert r.status == 200, r.body
        assert r.message()["id"] == 121
    assert await env.handovers() == before + 1


async def test_non_streamable_route_is_handed_over(env: Env) -> None:
    gw = env.gw
    before = await env.handovers()
    async with connected(gw) as c:
        r = await c.exchange(post(gw, init(131), server="legacy"))
        # aiohttp's route for a legacy HTTP+SSE server refuses a POST in the gateway's format
        assert r.status == 405, r.body
        assert r.message()["error"]["data"]["reason"] == "method_not_allowed"
    assert await env.handovers() == before + 1


# ------------------------------------------------------------------------------------------ fast_path: false


async def test_fast_path_off_serves_everything_with_aiohttp(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> None:
    gw = gateway(tmp_path_factory.mktemp("h1server-off"), upstream, {"fast_path": False})
    with running(gw):
        e = Env(gw, upstream)
        try:
            async with connected(gw) as c:
                r = await c.exchange(post(gw, init(101)))
                assert r.status == 200, r.body
                assert r.message()["id"] == 101
            async with connected(gw) as c2:
                r2 = await c2.exchange(get(gw, "/healthz"))
                assert r2.status == 200
            assert await e.handovers() == 0
        finally:
            if e.metrics is not None:
                await e.metrics.close()
