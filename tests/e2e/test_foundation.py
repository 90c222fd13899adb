"""The foundation end to end: a real gateway process, the official `mcp` SDK client, SDK-built upstreams.

Raw httpx requests appear only where a status code or header must be inspected (the v1 SDK client hangs on a
non-2xx answer). Run as a module (`python -m tests.e2e.test_foundation --port N`) this file is also the "gated"
upstream: a tool that reports progress and then waits until the test releases the next step, which lets the
streaming test prove the order of events without relying on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import ClientSession, McpError, types
from mcp.client.streamable_http import streamable_http_client
from mcp.server.fastmcp import Context, FastMCP
from prometheus_client.parser import text_string_to_metric_families

from gateway.transports.refusal_status import MESSAGE_STAGES
from gateway.version import VERSION
from tests.harness import (
    PYTHON,
    Gateway,
    Proc,
    Upstream,
    default_policies,
    free_port,
    running,
    start_gateway,
    wait_port,
)

pytestmark = pytest.mark.e2e

KEY = "k1"
DEADLINE = 20.0  # generous bound for anything that should happen "at once"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


# ------------------------------------------------------------------------------------------ the gated upstream


def build_gated_server(port: int) -> FastMCP:
    mcp = FastMCP("gated", host="127.0.0.1", port=port, log_level="WARNING")
    gates: dict[tuple[str, int], asyncio.Event] = {}

    def gate(run: str, step: int) -> asyncio.Event:
        return gates.setdefault((run, step), asyncio.Event())

    @mcp.tool()
    async def gated(run: str, n: int, ctx: Context) -> str:  # type: ignore[type-arg]
        """Report progress i, then wait until step i is released; finish after step n."""
        for i in range(1, n + 1):
            await ctx.report_progress(i, n, f"step {i}")
            await gate(run, i).wait()
        return f"released {n}"

    @mcp.tool()
    def seen_headers(ctx: Context) -> str:  # type: ignore[type-arg]
        """The HTTP headers this upstream received with the call (to check what the gateway forwards)."""
        request = ctx.request_context.request
        assert request is not None
        return json.dumps([[k.lower(), v] for k, v in request.headers.items()])

    @mcp.tool()
    def release(run: str, step: int) -> str:
        """Let `gated(run, ...)` go past step `step`."""
        gate(run, step).set()
        return "ok"

    return mcp


# ------------------------------------------------------------------------------------------ fixtures, helpers


@dataclass
class Env:
    gw: Gateway
    main: Upstream
    json_up: Upstream
    gated: Upstream
    down_port: int

    def headers(self, **extra: str) -> dict[str, str]:
        return {**self.gw.auth(KEY), **ACCEPT, **extra}


def start_upstreams(work: Path, args: list[list[str]], modules: list[str]) -> list[Upstream]:
    """Start several upstream processes at once (each takes about a second to import the SDK), then wait."""
    started = []
    for extra, module in zip(args, modules, strict=True):
        port = free_port()
        log = work / f"upstream-{port}.log"
        proc = Proc([PYTHON, "-m", module, "--port", str(port), *extra], log).start()
        started.append(Upstream(proc, port, "streamable-http"))
    try:
        for up in started:
            wait_port(up.port, proc=up.proc.popen, log=up.proc.log)
    except Exception:
        for up in started:
            up.stop()
        raise
    return started


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("foundation")
    main, json_up, gated = start_upstreams(
        work,
        [["--transport", "streamable-http"], ["--transport", "streamable-http", "--json-response"], []],
        ["examples.example_server", "examples.example_server", "tests.e2e.test_foundation"],
    )
    down_port = free_port()  # nothing listens here
    with running(main, json_up, gated):
        policies = default_policies(main.url)
        servers = policies["servers.yaml"]["servers"]
        servers["jsonmode"] = {"upstreams": [{"url": json_up.url}], "owner": "acme"}
        # its own pool with a short keep-alive, so the only connections to this upstream are live requests
        servers["gated"] = {
            "upstreams": [{"url": gated.url}],
            "owner": "acme",
            "pool": {"max_connections": 7, "keepalive_seconds": 0.1},
        }
        # no health checks or breaker here: these tests are about what the forward stage answers
        servers["down"] = {
            "upstreams": [{"url": f"http://127.0.0.1:{down_port}/mcp"}],
            "owner": "acme",
            "health": {"enabled": False},
            "breaker": {"enabled": False},
        }
        servers["small"] = {"upstreams": [{"url": main.url}], "owner": "acme", "max_body_bytes": 2048}
        servers["compat"] = {"upstreams": [{"url": main.url}], "owner": "acme", "compat_status_200": True}
        gw = start_gateway(
            work / "gw",
            policies,
            keys={KEY: {"tenant": "acme", "scopes": ["read", "write"]}},
            # keep-alive comments far apart: a write to a gone client must not be what ends the upstream request
            config={"logging": {"access_log": True}, "http": {"sse_keepalive_seconds": 300}},
        )
        with running(gw):
            yield Env(gw, main, json_up, gated, down_port)


@contextlib.asynccontextmanager
async def sdk_session(
    url: str, headers: dict[str, str], **kwargs: Any
) -> AsyncIterator[tuple[ClientSession, Callable[[], str | None]]]:
    async with (
        httpx.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write, get_session_id),
        ClientSession(read, write, **kwargs) as session,
    ):
        async with asyncio.timeout(DEADLINE):
            await session.initialize()
        yield session, get_session_id


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent), block
    return block.text


def sse_messages(body: str) -> list[dict[str, Any]]:
    return [orjson.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]


async def raw_initialize(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> str:
    """Initialize a session with plain HTTP; returns the session id."""
    r = await client.post(url, headers=headers, json=INIT)
    assert r.status_code == 200, r.text
    sid = r.headers["Mcp-Session-Id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    r2 = await client.post(url, headers={**headers, "Mcp-Session-Id": sid}, json=note)
    assert r2.status_code == 202, r2.text
    return sid


def metric(text: str, sample: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def scrape(gw: Gateway) -> str:
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.get(f"{gw.base}/metrics")
    assert r.status_code == 200
    return r.text


def upstream_connections(gw: Gateway, port: int) -> int:
    """Established TCP connections from the gateway process to an upstream port."""
    conns = psutil.Process(gw.proc.pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


async def eventually(
    cond: Callable[[], bool] | Callable[[], Awaitable[bool]], what: str, within: float = DEADLINE
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        got = cond()
        if isinstance(got, Awaitable):
            got = await got
        if got:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within}s: {what}")


def log_lines(gw: Gateway) -> list[dict[str, Any]]:
    out = []
    text = gw.logs()
    # the gateway may be writing its last line while it is read: only lines ended by their newline are complete
    complete = text[: text.rfind("\n") + 1]
    for line in complete.splitlines():
        if line.strip():
            out.append(orjson.loads(line))  # every line must be JSON: this raises on one that is not
    return out


# ------------------------------------------------------------------------------------------ MCP through the gateway


async def test_initialize_and_tools(env: Env) -> None:
    async with sdk_session(env.gw.url(), env.gw.auth(KEY)) as (s, get_id):
        assert get_id()  # the upstream's session id reached the client
        tools = {t.name for t in (await s.list_tools()).tools}
        assert {"echo", "add", "count", "confirm_action", "whoami"} <= tools
        assert text_of(await s.call_tool("echo", {"text": "héllo ✓"})) == "héllo ✓"
        assert text_of(await s.call_tool("add", {"a": 2, "b": 40})) == "42"
        err = await s.call_tool("add", {"a": "x", "b": 1})
        assert err.isError  # the upstream's own tool error is relayed untouched


async def test_resources_and_templates(env: Env) -> None:
    async with sdk_session(env.gw.url(), env.gw.auth(KEY)) as (s, _):
        uris = {str(r.uri) for r in (await s.list_resources()).resources}
        assert "example://greeting" in uris
        read = await s.read_resource("example://greeting")  # type: ignore[arg-type]
        assert read.contents[0].text == "hello from the example server"  # type: ignore[union-attr]
        templates = {t.uriTemplate for t in (await s.list_resource_templates()).resourceTemplates}
        assert "example://items/{item_id}" in templates
        item = await s.read_resource("example://items/42")  # type: ignore[arg-type]
        assert orjson.loads(item.contents[0].text) == {"id": "42"}  # type: ignore[union-attr]


async def test_prompts(env: Env) -> None:
    async with sdk_session(env.gw.url(), env.gw.auth(KEY)) as (s, _):
        assert "review" in {p.name for p in (await s.list_prompts()).prompts}
        got = await s.get_prompt("review", {"code": "print(1)"})
        content = got.messages[0].content
        assert isinstance(content, types.TextContent) and "print(1)" in content.text


async def test_progress_reaches_client_while_the_call_runs(env: Env) -> None:
    """Each progress event arrives before the test lets the upstream take the next step, so nothing buffers."""
    run = uuid.uuid4().hex
    n = 3
    arrivals: asyncio.Queue[float] = asyncio.Queue()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        assert total == n and message == f"step {int(progress)}"
        arrivals.put_nowait(progress)

    async with (
        sdk_session(env.gw.url("gated"), env.gw.auth(KEY)) as (s, _),
        sdk_session(env.gated.url, {}) as (direct, _),
    ):
        call = asyncio.create_task(s.call_tool("gated", {"run": run, "n": n}, progress_callback=on_progress))
        for step in range(1, n + 1):
            # progress `step` must arrive while the upstream is still blocked at this step
            async with asyncio.timeout(DEADLINE):
                assert await arrivals.get() == step
            assert not call.done()
            assert text_of(await direct.call_tool("release", {"run": run, "step": step})) == "ok"
        async with asyncio.timeout(DEADLINE):
            assert text_of(await call) == f"released {n}"
        assert arrivals.empty()


async def test_count_tool_progress_arrives_long_before_the_tool_can_finish(env: Env) -> None:
    """The example's `count` sleeps 60 s after its first progress event: a buffering proxy could not deliver that
    event before the call ends, yet it arrives (within a generous bound) while the call is still running."""
    first = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if progress == 1 and total == 2:
            first.set()

    async with sdk_session(env.gw.url(), env.gw.auth(KEY)) as (s, _):
        started = time.monotonic()
        call = asyncio.create_task(s.call_tool("count", {"n": 2, "delay": 60}, progress_callback=on_progress))
        try:
            async with asyncio.timeout(DEADLINE):
                await first.wait()
            assert not call.done() and time.monotonic() - started < 60
        finally:
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call


async def test_elicitation_answered_through_the_gateway(env: Env) -> None:
    asked: list[str] = []

    async def elicit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"confirmed": True})

    async with sdk_session(env.gw.url(), env.gw.auth(KEY), elicitation_callback=elicit) as (s, _):
        async with asyncio.timeout(DEADLINE):
            result = await s.call_tool("confirm_action", {"action": "deploy"})
        assert text_of(result) == "deploy: confirmed"
        assert asked == ["Confirm deploy?"]


async def test_delete_ends_the_session(env: Env) -> None:
    async with sdk_session(env.gw.url(), env.gw.auth(KEY)) as (s, get_id):
        await s.send_ping()
        sid = get_id()
    assert sid
    ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(env.gw.url(), headers=env.headers(**{"Mcp-Session-Id": sid}), json=ping)
        assert r.status_code == 404
        assert r.json()["id"] == 9
        # a raw DELETE too: the upstream's answer is relayed, then the id is gone
        sid2 = await raw_initialize(c, env.gw.url(), env.headers())
        d = await c.delete(env.gw.url(), headers=env.headers(**{"Mcp-Session-Id": sid2}))
        assert d.status_code == 200
        r2 = await c.post(env.gw.url(), headers=env.headers(**{"Mcp-Session-Id": sid2}), json=ping)
        assert r2.status_code == 404


async def test_json_response_upstream_is_relayed(env: Env) -> None:
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(env.gw.url("jsonmode"), headers=env.headers(), json=INIT)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        assert r.json()["result"]["serverInfo"]["name"] == "example"
    async with sdk_session(env.gw.url("jsonmode"), env.gw.auth(KEY)) as (s, _):
        assert text_of(await s.call_tool("add", {"a": 1, "b": 2})) == "3"


async def test_client_disconnect_closes_the_upstream_request(env: Env) -> None:
    run = uuid.uuid4().hex
    url = env.gw.url("gated")
    async with httpx.AsyncClient(timeout=10) as c:
        sid = await raw_initialize(c, url, env.headers())
    await eventually(lambda: upstream_connections(env.gw, env.gated.port) == 0, "idle pool connections closed")
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "gated", "arguments": {"run": run, "n": 1}, "_meta": {"progressToken": "p"}},
    }
    client = httpx.AsyncClient(timeout=10)
    try:
        async with client.stream("POST", url, headers=env.headers(**{"Mcp-Session-Id": sid}), json=call) as resp:
            assert resp.status_code == 200
            # hold the iterator: an abandoned `async for` generator is finalized at once, and httpx then closes
            # the connection itself, before the moment this test chooses
            lines = resp.aiter_lines()
            async with asyncio.timeout(DEADLINE):
                while not ((line := await anext(lines)).startswith("data:") and "notifications/progress" in line):
                    pass
            # the upstream is blocked mid-call, holding the one live connection
            assert upstream_connections(env.gw, env.gated.port) == 1
            in_flight = metric(await scrape(env.gw), "mcp_gateway_in_flight_requests")
            tail = "\n".join(env.gw.logs().splitlines()[-30:])
            assert in_flight >= 1, f"in flight {in_flight}; gateway log:\n{tail}"
    finally:
        await client.aclose()  # the client goes away mid-stream
    # bounded below 15 s: the upstream's SSE ping comes every 15 s, and relaying it to the gone client would end
    # the request even in a gateway that ignores the disconnect
    await eventually(lambda: upstream_connections(env.gw, env.gated.port) == 0, "upstream request closed", within=10)

    async def idle() -> bool:
        return metric(await scrape(env.gw), "mcp_gateway_in_flight_requests") == 0

    await eventually(idle, "gateway handler finished")
    async with sdk_session(env.gated.url, {}) as (direct, _):
        await direct.call_tool("release", {"run": run, "step": 1})


async def test_headers_reaching_the_upstream(env: Env) -> None:
    """The client's credentials and hop-by-hop headers stop at the gateway; MCP headers and the request id pass."""
    url = env.gw.url("gated")
    rid = f"hdr-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=10) as c:
        sid = await raw_initialize(c, url, env.headers())
        call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "seen_headers", "arguments": {}}}
        headers = env.headers(
            **{
                "Mcp-Session-Id": sid,
                "MCP-Protocol-Version": "2025-06-18",
                "X-Request-ID": rid,
                "Cookie": "session=client-cookie",
                "X-API-Key": "mgw_other_key",
                "Connection": "keep-alive, X-Hop-Secret",
                "X-Hop-Secret": "must-not-pass",
                "X-Forwarded-For": "198.51.100.9",
                "X-Custom": "kept",
            }
        )
        r = await c.post(url, headers=headers, json=call)
    assert r.status_code == 200 and r.headers["X-Request-ID"] == rid
    (message,) = sse_messages(r.text)
    seen = json.loads(message["result"]["content"][0]["text"])
    names = {k for k, _ in seen}
    got = dict(seen)
    assert got["mcp-session-id"] == sid and got["mcp-protocol-version"] == "2025-06-18"
    assert got["x-request-id"] == rid and got["x-custom"] == "kept"
    assert got["x-forwarded-for"] == "127.0.0.1"  # the gateway's view of the client, not the client's claim
    assert got["host"] == f"127.0.0.1:{env.gated.port}"
    for gone in ("authorization", "cookie", "x-api-key", "x-hop-secret", "origin"):
        assert gone not in names, f"{gone} reached the upstream"
    assert env.gw.keys[KEY] not in r.text


# ------------------------------------------------------------------------------------------ errors at the edge


async def test_upstream_down_is_502_at_once(env: Env) -> None:
    async with httpx.AsyncClient(timeout=DEADLINE) as c:
        r = await c.post(env.gw.url("down"), headers=env.headers(), json=INIT)
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["id"] == 1 and body["error"]["code"] == -31003
    assert body["error"]["data"]["reason"] == "upstream_unreachable"


@pytest.mark.parametrize(
    ("payload", "status", "code", "rpc_id"),
    [
        (b'{"jsonrpc": "2.0", "id": 5, "method": ', 400, -32700, None),
        (b"\xff\xfe not utf-8", 400, -32700, None),
        (b'{"jsonrpc": "1.0", "id": 6, "method": "ping"}', 400, -32600, 6),
        (b'[{"jsonrpc": "2.0", "id": 7, "method": "ping"}]', 400, -32600, None),
        (b'{"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "add"}}', 400, -32600, None),
    ],
    ids=["truncated", "binary", "bad-version", "batch-at-2025-06-18", "request-without-id"],
)
async def test_malformed_bodies(env: Env, payload: bytes, status: int, code: int, rpc_id: int | None) -> None:
    headers = env.headers(**{"MCP-Protocol-Version": "2025-06-18"})
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(env.gw.url(), headers=headers, content=payload)
    assert r.status_code == status and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == rpc_id and body["error"]["code"] == code


@settings(max_examples=60, deadline=None)
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
            max_leaves=10,
        ).map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"jsonrpc": st.just("2.0"), "method": st.sampled_from(["ping", "tools/call", "initialize"])},
            optional={"id": st.one_of(st.integers(), st.text(max_size=5), st.none(), st.floats()), "params": st.none()},
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_fuzzed_bodies_get_a_wellformed_jsonrpc_error(env: Env, raw: bytes) -> None:
    """Whatever the body, the real process answers with a JSON-RPC error (the route's upstream is down, so even a
    valid message ends in one): never a 500, a hang or a non-JSON answer. Under `compat_status_200: auto` the
    refusal of a message the caller may send (a scope it lacks, the upstream being down) goes out with 200, every
    other one with its own status (gateway/transports/refusal_status.py)."""
    with httpx.Client(timeout=DEADLINE) as c:
        r = c.post(env.gw.url("down"), headers=env.headers(), content=raw)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    stage = body["error"]["data"].get("stage") if isinstance(body.get("error"), dict) else None
    if r.status_code == 200:
        assert stage in MESSAGE_STAGES, (r.status_code, r.text)
    else:
        assert r.status_code in (400, 502), (r.status_code, r.text)
    assert set(body) == {"jsonrpc", "id", "error"} and body["jsonrpc"] == "2.0"
    assert isinstance(body["error"]["code"], int) and body["error"]["data"]["reason"]
    assert body["id"] is None or (isinstance(body["id"], str | int) and not isinstance(body["id"], bool))


async def test_oversized_body_is_413(env: Env) -> None:
    big = orjson.dumps({**INIT, "params": {**INIT["params"], "pad": "x" * 4096}})  # type: ignore[dict-item]

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    async with httpx.AsyncClient(timeout=10) as c:
        declared = await c.post(env.gw.url("small"), headers=env.headers(), content=big)
        chunked = await c.post(env.gw.url("small"), headers=env.headers(), content=chunks())
        fits = await c.post(env.gw.url("small"), headers=env.headers(), json=INIT)
    for r in (declared, chunked):
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == -32600
        assert r.json()["error"]["data"] == {"reason": "body_too_large", "stage": "parse", "limitBytes": 2048}
    assert fits.status_code == 200


async def test_unknown_server_is_404(env: Env) -> None:
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(env.gw.url("nope"), headers=env.headers(), json=INIT)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == -32601 and r.json()["error"]["data"]["reason"] == "unknown_server"


async def test_missing_credentials_is_401_with_jsonrpc_body(env: Env) -> None:
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(env.gw.url(), headers=ACCEPT, json=INIT)
    assert r.status_code == 401 and r.json()["id"] == 1 and r.json()["error"]["code"] == -31001


async def test_compat_route_lets_the_v1_sdk_client_see_refusals(env: Env) -> None:
    """The v1 Python SDK client hangs on a non-2xx answer; on a `compat_status_200` route it gets the refusal as a
    JSON-RPC error instead (bounded wait: a hang fails the test)."""
    real = env.gw.keys[KEY]
    bad = {"Authorization": f"Bearer {real[:-1]}{'A' if real[-1] != 'A' else 'B'}"}
    async with httpx.AsyncClient(timeout=10) as c:
        raw = await c.post(env.gw.url("compat"), headers={**ACCEPT, **bad}, json=INIT)
    assert raw.status_code == 200 and raw.json()["error"]["code"] == -31001
    # the SDK wraps the McpError in anyio exception groups; a hang would end as TimeoutError and fail below
    with pytest.raises(BaseException) as info:
        async with asyncio.timeout(DEADLINE), sdk_session(env.gw.url("compat"), bad):
            pass
    err = mcp_error_in(info.value)
    assert err is not None, f"not an McpError: {info.value!r}"
    assert err.error.code == -31001
    assert err.error.data is not None and err.error.data["reason"] == "unknown_key"


def mcp_error_in(exc: BaseException) -> McpError | None:
    if isinstance(exc, McpError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = mcp_error_in(inner)
            if found is not None:
                return found
    return None


# ------------------------------------------------------------------------------------------ operations


async def test_health_and_readiness(env: Env) -> None:
    async with httpx.AsyncClient(timeout=10) as c:
        h = await c.get(f"{env.gw.base}/healthz")
        r = await c.get(f"{env.gw.base}/readyz")
    assert h.status_code == 200 and h.json() == {"status": "ok", "version": VERSION}
    assert r.status_code == 200 and r.json()["status"] == "ready"
    assert re.fullmatch(r"[0-9a-f]{16}", r.json()["policy_version"])


async def test_metrics_count_requests_latency_and_upstream(env: Env) -> None:
    labels = {"server": "example", "method": "tools/call"}
    before = await scrape(env.gw)
    async with sdk_session(env.gw.url(), env.gw.auth(KEY)) as (s, _):
        await s.call_tool("add", {"a": 1, "b": 1})
        await s.call_tool("add", {"a": 1, "b": 2})
    async with httpx.AsyncClient(timeout=10) as c:
        await c.post(env.gw.url("down"), headers=env.headers(), json=INIT)
    after = await scrape(env.gw)

    def delta(sample: str, **lab: str) -> float:
        return metric(after, sample, **lab) - metric(before, sample, **lab)

    assert delta("mcp_gateway_requests_total", status="200", **labels) == 2
    assert delta("mcp_gateway_request_duration_seconds_count", **labels) == 2
    assert delta("mcp_gateway_upstream_duration_seconds_count", server="example") >= 3  # init + 2 calls at least
    assert delta("mcp_gateway_requests_total", server="down", method="initialize", status="502") == 1
    assert delta("mcp_gateway_decisions_total", stage="forward", reason="upstream_unreachable") == 1
    assert "mcp_gateway_in_flight_requests" in after
    assert metric(after, "mcp_gateway_policy_last_reload_failed") == 0


async def test_request_id_is_taken_returned_and_logged(env: Env) -> None:
    mine = f"test-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=10) as c:
        given = await c.post(env.gw.url(), headers=env.headers(**{"X-Request-ID": mine}), json=INIT)
        generated = await c.post(env.gw.url(), headers=env.headers(), json=INIT)
        refused = await c.post(env.gw.url("nope"), headers=env.headers(**{"X-Request-ID": mine + "-r"}), json=INIT)
        invalid = await c.post(env.gw.url(), headers=env.headers(**{"X-Request-ID": "x" * 500}), json=INIT)
    assert given.headers["X-Request-ID"] == mine
    assert refused.headers["X-Request-ID"] == mine + "-r"
    gen = generated.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", gen)
    assert re.fullmatch(r"[0-9a-f]{32}", invalid.headers["X-Request-ID"])  # too long: replaced, not echoed

    def logged() -> bool:
        ids = {(e.get("event"), e.get("request_id")) for e in log_lines(env.gw)}
        return {("request", mine), ("request", gen), ("request", mine + "-r")} <= ids

    await eventually(logged, "access log lines for the three requests")
    line = next(e for e in log_lines(env.gw) if e.get("request_id") == mine)
    assert line["server"] == "example" and line["method"] == "initialize" and line["status"] == 200
    assert line["level"] == "info" and "timestamp" in line
    denied = next(e for e in log_lines(env.gw) if e.get("request_id") == mine + "-r")
    assert denied["status"] == 404 and denied["refused_reason"] == "unknown_server"


async def test_logs_are_json_lines_without_credentials(env: Env) -> None:
    # the port accepts connections a moment before the line is written: a test scheduled first on its worker
    # could read the log before it
    await eventually(
        lambda: any(e.get("event") == "gateway listening" for e in log_lines(env.gw)),  # raises on a non-JSON line
        "the 'gateway listening' line",
    )
    assert env.gw.keys[KEY] not in env.gw.logs()


# ------------------------------------------------------------------------------------------ the gated upstream


def main() -> None:
    parser = argparse.ArgumentParser(description="the gated test upstream")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    build_gated_server(args.port).run(transport="streamable-http")


if __name__ == "__main__":
    main()
