"""Sessions across gateway replicas: two gateway processes sharing the real Redis serve one MCP session."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import redis.asyncio as aioredis
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import SHARED_REDIS_URL as REDIS_URL
from tests.conftest import _require
from tests.harness import Gateway, Upstream, api_key, default_policies, running, start_gateway, start_upstream
from tests.upstreams.sse_read import EventReader

pytestmark = pytest.mark.e2e

# long enough that restarting the upstream on a loaded machine never outlasts a session (test_upstream_404_...)
TTL = 6.0


class Alternating(httpx.AsyncBaseTransport):
    """Sends each request to the next gateway in turn (what a load balancer without affinity does)."""

    def __init__(self, ports: list[int]) -> None:
        self._ports = ports
        self._inner = httpx.AsyncHTTPTransport()
        self._n = 0
        self.used: Counter[tuple[int, str]] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        port = self._ports[self._n % len(self._ports)]
        self._n += 1
        request.url = request.url.copy_with(port=port)
        self.used[(port, request.method)] += 1
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Any:
    _require("Redis", 6379)  # the shared Redis (module scope: the function-scoped `redis_url` cannot be used)
    redis_url = REDIS_URL
    tmp = tmp_path_factory.mktemp("replicas")
    up = start_upstream(tmp)
    legacy = start_upstream(tmp, transport="sse")
    made = {kid: api_key(kid) for kid in ("k1", "k2", "ro")}
    policies = default_policies(up.url)
    policies["servers.yaml"]["servers"]["legacy"] = {
        "upstreams": [{"url": legacy.url}],
        "owner": "acme",
        "transport": "sse",
    }
    policies["tenants.yaml"]["tenants"]["acme"]["servers"].append("legacy")
    policies["tenants.yaml"]["tenants"]["acme"]["tools"] = {"deny": ["secret_admin_tool"]}
    policies["keys.yaml"] = {
        "keys": [
            {"id": kid, "hash": digest, "tenant": "acme", "scopes": ["read"] if kid == "ro" else ["read", "write"]}
            for kid, (_, digest) in made.items()
        ]
    }
    prefix = f"mgwtest-{uuid.uuid4().hex}:"
    # behind one load balancer every replica serves the Host clients use; `Alternating` keeps the first
    # gateway's Host while it sends to either port, so each replica serves the other's loopback authority too
    http = {"session_ttl_seconds": TTL, "allowed_hosts": ["127.0.0.1:*"]}
    config = {"redis": {"url": redis_url, "key_prefix": prefix}, "http": http}
    a = start_gateway(tmp / "a", policies, config=config)
    b = start_gateway(tmp / "b", policies, config=config)
    for gw in (a, b):
        gw.keys.update({kid: raw for kid, (raw, _) in made.items()})
    with running(a, b, up, legacy):
        yield a, b, up, prefix


def _init_body() -> dict[str, Any]:
    params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}


HDRS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}


async def _initialize(http: httpx.AsyncClient, gw: Gateway) -> str:
    r = await http.post(gw.url(), json=_init_body(), headers={**gw.auth("k1"), **HDRS})
    assert r.status_code == 200, r.text
    sid = r.headers["Mcp-Session-Id"]
    r = await http.post(
        gw.url(),
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        headers={**gw.auth("k1"), **HDRS, "Mcp-Session-Id": sid},
    )
    assert r.status_code == 202
    return sid


async def _tools_list(http: httpx.AsyncClient, gw: Gateway, sid: str, key: str = "k1") -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    return await http.post(gw.url(), json=body, headers={**gw.auth(key), **HDRS, "Mcp-Session-Id": sid})


async def test_sdk_session_alternating_between_two_gateways(replicas: tuple[Gateway, Gateway, Upstream, str]) -> None:
    a, b, _, prefix = replicas
    alt = Alternating([a.port, b.port])
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    http = httpx.AsyncClient(transport=alt, headers=a.auth("k1"), timeout=httpx.Timeout(30, read=60))
    async with http, streamable_http_client(a.url(), http_client=http) as (r, w, get_sid), ClientSession(r, w) as s:
        await s.initialize()
        sid = get_sid()
        assert sid
        for i in range(4):
            res = await s.call_tool("add", {"a": i, "b": 1})
            assert res.content[0].text == str(i + 1)  # type: ignore[union-attr]
        res = await s.call_tool("count", {"n": 2, "delay": 0.05}, progress_callback=on_progress)
        assert res.content[0].text == "counted to 2"  # type: ignore[union-attr]
        assert progress == [1, 2]
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            assert await client.exists(f"{prefix}sess:example:{sid}") == 1
        finally:
            await client.aclose()
    assert alt.used[(a.port, "POST")] >= 3 and alt.used[(b.port, "POST")] >= 3, alt.used


async def test_raw_session_alternating_and_foreign_principal(replicas: tuple[Gateway, Gateway, Upstream, str]) -> None:
    a, b, _, _ = replicas
    async with httpx.AsyncClient(timeout=30) as http:
        sid = await _initialize(http, a)
        for gw in (b, a, b):
            r = await _tools_list(http, gw, sid)
            assert r.status_code == 200, r.text
        r = await _tools_list(http, b, sid, key="k2")
        assert r.status_code == 404  # another principal: same answer as an unknown session
        r = await _tools_list(http, a, "no-such-session")
        assert r.status_code == 404
        assert r.json()["error"]["data"]["reason"] == "session_not_found"


async def test_expired_session_is_404_and_reinitialize_works(
    replicas: tuple[Gateway, Gateway, Upstream, str],
) -> None:
    a, b, _, _ = replicas
    async with httpx.AsyncClient(timeout=30) as http:
        sid = await _initialize(http, a)
        await asyncio.sleep(TTL + 0.5)
        r = await _tools_list(http, b, sid)
        assert r.status_code == 404
        assert r.json()["error"]["data"]["reason"] == "session_not_found"
        sid2 = await _initialize(http, b)
        assert (await _tools_list(http, a, sid2)).status_code == 200


async def test_upstream_404_drops_the_binding(replicas: tuple[Gateway, Gateway, Upstream, str], tmp_path: Path) -> None:
    a, b, up, prefix = replicas
    async with httpx.AsyncClient(timeout=30) as http:
        sid = await _initialize(http, a)
        # the upstream restarts on the same port: its in-memory sessions are gone
        up.stop()
        new = start_upstream(tmp_path, port=up.port)
        up.proc = new.proc
        r = await _tools_list(http, a, sid)
        for _ in range(3):
            # a pooled connection to the old process may break on first use (reported as 502/503 when the
            # forwarder's retry budget is spent, sent with 200 + the error under `compat_status_200: auto`); what is
            # under test is the restarted upstream's 404
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            gateway_failure = isinstance(body, dict) and (body.get("error") or {}).get("data", {}).get("stage")
            if r.status_code not in (502, 503) and gateway_failure != "forward":
                break
            await asyncio.sleep(0.2)
            r = await _tools_list(http, a, sid)
        assert r.status_code == 404, (r.status_code, r.text)
        # this 404 is the upstream's own (relayed), not a gateway refusal
        assert "X-Request-ID" in r.headers and "reason" not in r.text, r.text
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            assert await client.exists(f"{prefix}sess:example:{sid}") == 0
        finally:
            await client.aclose()
        r = await _tools_list(http, b, sid)  # the other replica now answers 404 itself
        assert r.status_code == 404
        assert r.json()["error"]["data"]["reason"] == "session_not_found"
        sid2 = await _initialize(http, b)
        assert (await _tools_list(http, a, sid2)).status_code == 200


async def test_legacy_sse_session_across_replicas(replicas: tuple[Gateway, Gateway, Upstream, str]) -> None:
    """The stream is held by A; POSTs go to B, reach the same upstream session, and B's refusal reaches A's stream."""
    a, b, _, _ = replicas
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        stream = await http.get(a.url("legacy"), headers={**a.auth("ro"), "Accept": "text/event-stream"})
        assert stream.status == 200
        events = EventReader(stream)
        endpoint = await events.next()
        assert endpoint.event == "endpoint" and endpoint.data is not None
        params = {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
        r = await http.post(b.base + endpoint.data, json=init, headers=b.auth("ro"))
        assert r.status == 202
        answer = json.loads((await events.next_message()).data or "")
        assert answer["id"] == 1 and answer["result"]["serverInfo"]["name"] == "example"
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "add", "arguments": {}}}
        r = await http.post(b.base + endpoint.data, json=call, headers=b.auth("ro"))
        assert r.status == 200  # a refused legacy SSE POST: 200 + the error (`compat_status_200: auto`)
        refused = json.loads((await events.next_message()).data or "")
        assert refused == await r.json()
        # B forwarded the tools/list; its answer arrives on A's stream, filtered for the caller all the same
        r = await http.post(
            b.base + endpoint.data, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers=b.auth("ro")
        )
        assert r.status == 202
        listed = json.loads((await events.next_message()).data or "")
        names = {t["name"] for t in listed["result"]["tools"]}
        # B's POST, answered on A's stream: the answer to id 3, filtered (a read-only key may call none of them;
        # the upstream's list has add, echo, ...)
        assert listed["id"] == 3 and names == set()
        stream.close()
