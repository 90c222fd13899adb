"""Slow clients and the HTTP front door (issue #14, findings 4, 8 (Host) and 9), through a real gateway process.

Every test runs against both servers of the listener: the lean HTTP/1.1 server (`http.fast_path: true`, the
default) and aiohttp's alone (`fast_path: false`); with the lean server, the requests it does not serve itself are
handed to aiohttp, so both code paths are crossed either way. Requests are written on raw sockets, so that what is
on the wire (a head that never ends, a body that never comes) is what the test says. The gateway runs with short
deadlines (1 s); every wait is bounded by a generous GUARD, and no duration is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.admin.problem import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX
from tests.harness import Gateway, Upstream, default_policies, running, start_gateway, start_upstream
from tests.integration.test_h1server import Client, Resp, connect, connected, read_response

pytestmark = pytest.mark.e2e

KEY = "k1"
ADMIN = "adm"
GUARD = 10.0  # "eventually": far above the 1 s deadlines, never a timing assertion
BIG = 4 * 1024 * 1024  # http.max_body_bytes (the default): the largest body the lean server takes itself
DEADLINES = {"head_timeout_seconds": 1, "body_timeout_seconds": 1, "body_min_rate": 1024}
PROTOCOL = "2025-06-18"
PATHS = {"lean": True, "aiohttp": False}


def init_body(id_: int = 1) -> bytes:
    params = {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": "initialize", "params": params}).encode()


def head(
    gw: Gateway,
    *,
    method: str = "POST",
    path: str = "/mcp/example",
    length: int | None = None,
    auth: bool = True,
    host: list[str] | None = None,
    extra: dict[str, str] | None = None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1"]
    for h in [f"127.0.0.1:{gw.port}"] if host is None else host:
        lines.append(f"Host: {h}")
    lines += ["Accept: application/json, text/event-stream", "Content-Type: application/json"]
    if auth:
        lines.append(f"Authorization: Bearer {gw.keys[KEY]}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the gateway has closed the connection (EOF or reset) within GUARD; every byte after an answer
    already read is a failure."""
    try:
        async with asyncio.timeout(GUARD):
            rest = await reader.read()
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    assert rest == b"", f"unexpected bytes: {rest[:300]!r}"
    return True


def assert_refusal(r: Resp, status: int, reason: str) -> dict[str, Any]:
    """A well-formed refusal: the status, a JSON-RPC error body with `data.reason`."""
    assert r.status == status, (r.status, r.body)
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    doc = r.message()
    assert doc["jsonrpc"] == "2.0" and "id" in doc, doc
    assert isinstance(doc["error"]["code"], int) and doc["error"]["data"]["reason"] == reason, doc
    return doc


def assert_problem(r: Resp, status: int, reason: str) -> dict[str, Any]:
    """The same refusal on an admin API path: the status, RFC 9457 problem details with the reason."""
    assert r.status == status, (r.status, r.body)
    assert r.headers["Content-Type"] == PROBLEM_CONTENT_TYPE, r.headers
    doc = r.message()
    assert "jsonrpc" not in doc and doc["status"] == status and doc["reason"] == reason, doc
    assert doc["type"] == PROBLEM_TYPE_PREFIX + reason and doc["title"] and doc["detail"], doc
    return doc


def closing(r: Resp) -> bool:
    return r.headers.get("Connection", "").lower() == "close"


def audit_records(gw: Gateway) -> list[dict[str, Any]]:
    path = gw.workdir / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def audited(gw: Gateway, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The audit record `match` accepts, once the writer has flushed it."""
    deadline = time.monotonic() + GUARD
    while True:
        found = [r for r in audit_records(gw) if match(r)]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, "no such audit record"
        await asyncio.sleep(0.1)


async def audited_id(gw: Gateway, request_id: str) -> dict[str, Any]:
    return await audited(gw, lambda r: r["request_id"] == request_id)


async def metric(gw: Gateway, name: str, labels: str = "") -> float:
    async with httpx.AsyncClient(timeout=GUARD) as c:
        r = await c.get(f"{gw.base}/metrics")
    assert r.status_code == 200
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", r.text, re.MULTILINE)
    assert m is not None, f"{name}{labels} missing from /metrics"
    return float(m.group(1))


async def refused(gw: Gateway, reason: str) -> float:
    return await metric(gw, "mcp_gateway_connections_refused_total", f'{{reason="{reason}"}}')


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ------------------------------------------------------------------------------------------ gateways


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = start_upstream(tmp_path_factory.mktemp("front-up"), json_response=True)
    with running(up):
        yield up


def start(work: Path, upstream: Upstream, fast: bool, **http: Any) -> Gateway:
    return start_gateway(
        work,
        default_policies(upstream.url),
        keys={KEY: {"tenant": "acme", "scopes": ["read", "write"]}, ADMIN: {"tenant": "acme", "scopes": ["admin"]}},
        config={"http": {"fast_path": fast, **DEADLINES, **http}},
    )


@pytest.fixture(scope="module", params=list(PATHS))
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[Gateway]:
    """A gateway with 1 s deadlines and a per-peer cap above what the tests open (they all come from 127.0.0.1)."""
    g = start(
        tmp_path_factory.mktemp(f"front-{request.param}"), upstream, PATHS[request.param], max_connections_per_ip=1000
    )
    with running(g):
        yield g


@contextlib.asynccontextmanager
async def opened(gw: Gateway, n: int) -> AsyncIterator[list[Client]]:
    clients = [await connect(gw) for _ in range(n)]
    try:
        yield clients
    finally:
        for c in clients:
            await c.close()


async def send_quietly(c: Client, data: bytes) -> None:
    """Write what a misbehaving client writes; the gateway may already have closed the connection."""
    with contextlib.suppress(ConnectionError):
        c.writer.write(data)
        await c.writer.drain()


# ------------------------------------------------------------------------------------------ slowloris: heads


async def test_slowloris_heads_are_refused_408_and_closed(gw: Gateway) -> None:
    """Connections that never finish a request head (or never send one) get 408 and are closed at the head
    deadline, whichever server holds them (a GET head is handed to aiohttp on the lean path)."""
    before = await refused(gw, "head_timeout")
    shapes = [
        b"",
        b"POST /mcp/example HTTP/1.1\r\nHost: x\r\n",
        b"GET /mcp/example HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        b"POST /mcp/exa",
    ]
    async with opened(gw, 20) as clients:
        for i, c in enumerate(clients):
            await send_quietly(c, shapes[i % len(shapes)])

        async def refused_and_closed(c: Client) -> None:
            r = await read_response(c.reader)
            assert_refusal(r, 408, "head_timeout")
            assert closing(r)
            assert await closed(c.reader)

        await asyncio.gather(*(refused_and_closed(c) for c in clients))
    assert await refused(gw, "head_timeout") >= before + 20


async def test_trickled_head_is_closed_at_the_head_deadline(gw: Gateway) -> None:
    """A head sent a byte at a time (each pause far shorter than the deadline) is still held to the deadline from
    its first byte."""
    data = head(gw, length=10)
    async with connected(gw) as c:

        async def trickle() -> None:
            for i in range(len(data) - 1):  # never the last byte
                await send_quietly(c, data[i : i + 1])
                await asyncio.sleep(0.05)

        task = asyncio.create_task(trickle())
        try:
            r = await read_response(c.reader)
            assert_refusal(r, 408, "head_timeout")
            assert await closed(c.reader)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# ------------------------------------------------------------------------------------------ slowloris: bodies


@pytest.mark.parametrize("pace", ["stalled", "below_min_rate"])
async def test_slow_body_is_refused_408_and_closed(gw: Gateway, pace: str) -> None:
    """An authenticated request whose body stops coming, or comes slower than `http.body_min_rate`, gets an
    audited 408 and its connection is closed."""
    rid = uuid.uuid4().hex
    async with connected(gw) as c:
        await c.send(head(gw, length=BIG, extra={"X-Request-ID": rid}) + b"x" * 1000)

        async def trickle() -> None:
            if pace == "stalled":
                return
            while True:  # 160 bytes/s, every pause well under body_timeout_seconds
                await send_quietly(c, b"x" * 16)
                await asyncio.sleep(0.1)

        task = asyncio.create_task(trickle())
        try:
            r = await read_response(c.reader)
            assert_refusal(r, 408, "body_timeout")
            assert closing(r)
            assert await closed(c.reader)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    rec = await audited_id(gw, rid)
    assert (rec["http_status"], rec["reason"], rec["decision"]) == (408, "body_timeout", "refused")
    assert rec["tenant"] == "acme"  # the caller was authenticated before its body was waited for


@pytest.mark.parametrize("credential", ["none", "unknown_key"])
async def test_unauthenticated_large_body_is_refused_from_the_head(gw: Gateway, credential: str) -> None:
    """Without a valid credential, a request announcing a 4 MiB body is refused 401 as soon as its head is in:
    no byte of the body is sent, and the connection is closed (its body will not be read)."""
    rid = uuid.uuid4().hex
    extra = {"X-Request-ID": rid}
    if credential == "unknown_key":
        extra["Authorization"] = "Bearer mgw_nosuch_" + "A" * 32
    async with connected(gw) as c:
        await c.send(head(gw, length=BIG, auth=False, extra=extra))
        r = await read_response(c.reader)
        reason = "missing_credentials" if credential == "none" else "unknown_key"
        assert_refusal(r, 401, reason)
        assert closing(r)
        assert await closed(c.reader)
    rec = await audited_id(gw, rid)
    assert (rec["http_status"], rec["stage"], rec["reason"]) == (401, "authn", reason)


async def test_unauthenticated_body_sent_anyway_is_dropped_and_closed(gw: Gateway) -> None:
    """A client that sends its body regardless of the early 401 has it read and dropped, then the connection ends."""
    async with connected(gw) as c:
        await c.send(head(gw, length=BIG, auth=False))
        r = await read_response(c.reader)
        assert_refusal(r, 401, "missing_credentials")
        assert closing(r)
        await send_quietly(c, b"x" * (1024 * 1024))
        assert await closed(c.reader)


async def test_expect_continue_is_not_answered_before_authentication(gw: Gateway) -> None:
    """`Expect: 100-continue` without a credential gets the 401 and never a `100 Continue`; with one, the 100 comes
    and the request is served."""
    async with connected(gw) as c:
        await c.send(head(gw, length=BIG, auth=False, extra={"Expect": "100-continue"}))
        r = await read_response(c.reader)
        assert_refusal(r, 401, "missing_credentials")  # the first answer, not a 100
        assert closing(r)
        assert await closed(c.reader)
    body = init_body(7)
    async with connected(gw) as c:
        await c.send(head(gw, length=len(body), extra={"Expect": "100-continue"}))
        interim = await read_response(c.reader)
        assert interim.status == 100
        await c.send(body)
        r = await read_response(c.reader)
        assert r.status == 200, r.body
        assert r.message()["id"] == 7


async def test_expect_continue_on_the_admin_api_waits_for_the_admin_credential(gw: Gateway) -> None:
    """The admin API's own authentication also comes before `100 Continue`."""
    async with connected(gw) as c:
        await c.send(head(gw, path="/admin/keys", length=BIG, auth=False, extra={"Expect": "100-continue"}))
        r = await read_response(c.reader)
        assert_problem(r, 401, "missing_credentials")
        assert closing(r)
        assert await closed(c.reader)
    body = b"{}"
    admin = {"Expect": "100-continue", "Authorization": f"Bearer {gw.keys[ADMIN]}"}
    async with connected(gw) as c:
        await c.send(head(gw, path="/admin/keys", length=len(body), auth=False, extra=admin))
        interim = await read_response(c.reader)
        assert interim.status == 100
        await c.send(body)
        r = await read_response(c.reader)
        # whatever the admin API answers: an answer, or a problem
        assert r.headers["Content-Type"] in ("application/json", PROBLEM_CONTENT_TYPE), r.headers


# ------------------------------------------------------------------------------------------ per-peer connection cap

CAP = 4


@pytest.fixture(params=list(PATHS))
def capped(request: pytest.FixtureRequest, tmp_path: Path, upstream: Upstream) -> Iterator[Gateway]:
    # a head deadline longer than the test: the connections held open must not be closed by it
    g = start(tmp_path / "gw", upstream, PATHS[request.param], max_connections_per_ip=CAP, head_timeout_seconds=60)
    with running(g):
        yield g


async def test_connections_per_peer_are_capped(capped: Gateway) -> None:
    """One connection over `http.max_connections_per_ip` gets a well-formed 503 and is closed; connections handed
    from the lean server to aiohttp's still count; a closed connection frees its place."""
    gw = capped
    async with opened(gw, CAP) as held:
        for c in held[:2]:  # keep-alive connections served by aiohttp (handed over on the lean path)
            r = await c.exchange(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode())
            assert r.status == 200
        async with connected(gw) as extra:
            r = await read_response(extra.reader)
            assert_refusal(r, 503, "too_many_connections")
            assert r.headers["Retry-After"] == "1"
            assert closing(r)
            assert await closed(extra.reader)
        await held[0].close()
        deadline = time.monotonic() + GUARD
        while True:  # the gateway frees the place once it has seen the close
            async with connected(gw) as c:
                r = await c.exchange(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode())
            if r.status == 200:
                break
            assert_refusal(r, 503, "too_many_connections")
            assert time.monotonic() < deadline, "the closed connection's place was never freed"
            await asyncio.sleep(0.1)
    assert await refused(gw, "too_many_connections") >= 1


# ------------------------------------------------------------------------------------------ Host


@pytest.mark.parametrize("hosts", [[], ["127.0.0.1", "evil.example"]], ids=["no-host", "two-hosts"])
async def test_http11_without_exactly_one_host_is_refused_400(gw: Gateway, hosts: list[str]) -> None:
    """RFC 9112 3.2: an HTTP/1.1 request with no Host, or two, is refused 400 (audited), even with a valid key."""
    body = init_body(3)
    async with connected(gw) as c:
        r = await c.exchange(head(gw, length=len(body), host=hosts) + body, version="1.0")
        assert_refusal(r, 400, "malformed_request")
        assert await closed(c.reader)  # (an HTTP/1.0 answer closes without saying so)
    rec = await audited_id(gw, r.headers["X-Request-ID"])
    assert (rec["http_status"], rec["stage"], rec["reason"]) == (400, "http", "malformed_request")


# ------------------------------------------------------------------------------------------ the error contract


@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS", "HEAD"])
async def test_other_methods_get_a_json_405_with_allow_and_are_audited(gw: Gateway, method: str) -> None:
    rid = uuid.uuid4().hex
    async with connected(gw) as c:
        await c.send(head(gw, method=method, length=0, extra={"X-Request-ID": rid}))
        if method == "HEAD":  # the answer to a HEAD has no body, whatever its Content-Length says
            async with asyncio.timeout(GUARD):
                lines = (await c.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            assert lines[0].startswith("HTTP/1.1 405 "), lines
            headers = dict(line.split(": ", 1) for line in lines[1:] if line)
            assert headers["Content-Type"].startswith("application/json")
        else:
            r = await read_response(c.reader)
            assert_refusal(r, 405, "method_not_allowed")
            headers = dict(r.headers)
        assert set(headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST", "DELETE"}
    rec = await audited_id(gw, rid)
    assert (rec["http_method"], rec["http_status"], rec["reason"], rec["server"]) == (
        method,
        405,
        "method_not_allowed",
        "example",
    )


async def test_unknown_path_gets_a_json_404_and_is_audited(gw: Gateway) -> None:
    rid = uuid.uuid4().hex
    async with connected(gw) as c:
        r = await c.exchange(head(gw, method="GET", path="/wp-admin/setup.php", extra={"X-Request-ID": rid}))
        assert_refusal(r, 404, "unknown_route")
    rec = await audited_id(gw, rid)
    assert (rec["http_status"], rec["reason"], rec["stage"]) == (404, "unknown_route", "http")


@pytest.mark.parametrize("upgrade", ["h2c", "websocket", None])
async def test_post_with_connection_upgrade_is_answered(gw: Gateway, upgrade: str | None) -> None:
    """`POST` with `Connection: Upgrade` (and an `Upgrade` protocol or none) is served as the POST it is."""
    body = init_body(5)
    extra = {"Connection": "Upgrade"}
    if upgrade is not None:
        extra["Upgrade"] = upgrade
    async with connected(gw) as c:
        r = await c.exchange(head(gw, length=len(body), extra=extra) + body)
        assert r.status == 200, r.body
        assert r.message()["id"] == 5


async def test_connection_close_is_honoured_with_an_empty_body(gw: Gateway) -> None:
    async with connected(gw) as c:
        r = await c.exchange(head(gw, length=0, extra={"Connection": "close"}))
        assert_refusal(r, 400, "empty_body")
        assert closing(r)
        assert await closed(c.reader)


# ------------------------------------------------------------------------------------------ memory


async def test_partial_heads_and_bodies_leave_no_memory_behind(gw: Gateway) -> None:
    """300 partial heads and 40 unauthenticated bodies stopped after 3 MiB (issue #14: all still open after
    130 s, 76 -> 235 MiB): every connection is closed by the deadlines, and the gateway does not keep the memory."""
    baseline = rss_bytes(gw.proc.pid)
    partial_head = head(gw)[:-4] + b"\r\nX-Pad: " + b"p" * 4000
    chunk = b"x" * (3 * 1024 * 1024)
    async with opened(gw, 340) as clients:
        await asyncio.gather(
            *(send_quietly(c, partial_head) for c in clients[:300]),
            *(send_quietly(c, head(gw, length=BIG, auth=False) + chunk) for c in clients[300:]),
        )

        async def refused_and_closed(c: Client, status: int) -> bool:
            try:
                response = await read_response(c.reader)
            except ConnectionError:
                # a body sender may still be writing its 3 MiB when the gateway answers 401 and closes: its write
                # then fails (EPIPE) and asyncio drops the unread answer with the transport. The connection was
                # closed by the gateway all the same, which is what is asserted here (seen under CI load)
                assert status == 401
                return True
            assert response.status == status
            return await closed(c.reader)

        results = await asyncio.gather(
            *(refused_and_closed(c, 408) for c in clients[:300]),
            *(refused_and_closed(c, 401) for c in clients[300:]),
        )
    assert all(results), f"{results.count(False)} connections still open"
    await asyncio.sleep(1.0)  # the writer's and the loop's last frees
    grown = rss_bytes(gw.proc.pid) - baseline
    sent = 300 * len(partial_head) + 40 * len(chunk)
    print(f"RSS grew by {grown / 2**20:.1f} MiB after {sent / 2**20:.0f} MiB were sent")
    assert grown < sent / 4, f"RSS grew by {grown / 2**20:.0f} MiB after {sent / 2**20:.0f} MiB were sent and dropped"
