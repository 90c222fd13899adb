"""Session takeover and session flooding, refused through a real gateway process (issue 14, findings 2 and 8).

Every test runs against the embedded gateway (in-process bindings) and against one with Redis bindings (a private
redis-server), because the two keep bindings in different code. Victims use the official MCP SDK where MCP
behaviour matters; attackers send raw requests, since what they send is what an SDK would never send.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import redis.asyncio as aioredis
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from multidict import CIMultiDict

from tests.e2e.test_identity_helpers import (
    ACCEPT,
    PROTOCOL,
    Answer,
    assert_refused,
    audit_record,
    initialize_msg,
    open_session,
    post,
    recorded,
    rpc,
    start_recorder,
)
from tests.harness import (
    PYTHON,
    Gateway,
    Proc,
    RedisInstance,
    free_port,
    start_gateway,
    start_redis,
    start_upstream,
    wait_port,
)
from tests.upstreams.sse_read import EventReader

pytestmark = pytest.mark.e2e

SESSION_UNKNOWN = -31007
CONCURRENCY_LIMITED = -31031
RATE_LIMITED = -31029
INVALID_REQUEST = -32600
MODERN = "2026-07-28"
META = "io.modelcontextprotocol/protocolVersion"
PER_KEY = 3
PER_TENANT = 5


@dataclass
class Upstreams:
    example: str
    legacy: str
    ws: str
    rec: str
    record: Path  # what the header-recording upstream received
    fixed: str  # an upstream giving every session the same id


@dataclass
class Env:
    backend: str
    gw: Gateway
    audit: Path
    record: Path
    redis: RedisInstance | None

    def h(self, key_id: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.gw.keys[key_id]}", **extra}

    async def owner(self, server: str, session_id: str) -> str | None:
        """The principal Redis holds the binding for (Redis backend only)."""
        assert self.redis is not None
        client = aioredis.Redis.from_url(self.redis.url)
        try:
            raw = await client.get(f"mgwtest:sess:{server}:{session_id}")
        finally:
            await client.aclose()
        return None if raw is None else str(json.loads(raw)["p"])


@pytest.fixture(scope="module")
def ups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    work = tmp_path_factory.mktemp("sessions-upstreams")
    example = start_upstream(work)
    legacy = start_upstream(work, transport="sse")
    ws_port = free_port()
    ws = Proc([PYTHON, "-m", "tests.upstreams.ws_server", "--port", str(ws_port)], work / "ws.log").start()
    wait_port(ws_port, proc=ws.popen, log=ws.log)
    rec, record = start_recorder(work, json_response=True)
    fixed_port = free_port()
    fixed = Proc([PYTHON, "-m", "tests.upstreams.fixed_session", "--port", str(fixed_port)], work / "fixed.log").start()
    wait_port(fixed_port, proc=fixed.popen, log=fixed.log)
    try:
        yield Upstreams(
            example.url,
            legacy.url,
            f"ws://127.0.0.1:{ws_port}/ws",
            rec.url,
            record,
            f"http://127.0.0.1:{fixed_port}/mcp",
        )
    finally:
        for proc in (example, legacy, ws, rec, fixed):
            proc.stop()


def _gateway(
    work: Path,
    backend: str,
    servers: dict[str, Any],
    tenants: dict[str, Any],
    keys: dict[str, dict[str, Any]],
    record: Path,
    http: dict[str, Any],
) -> Iterator[Env]:
    redis = start_redis(work) if backend == "redis" else None
    # distinct client addresses for the anonymous tests come from X-Forwarded-For, believed from loopback
    config: dict[str, Any] = {"http": {"trusted_proxies": ["127.0.0.1/32"], **http}}
    if redis is not None:
        config["redis"] = {"url": redis.url, "key_prefix": "mgwtest:"}
    policies = {
        "servers.yaml": {"servers": servers},
        "tenants.yaml": {"tenants": tenants},
        "keys.yaml": {"keys": []},
        # refusals are what these tests provoke: the IP blocker must not join in; rates are tested on their own key
        "limits.yaml": {"ddos": {"enabled": False}, "tiers": {}},
        "access.yaml": {"rules": []},
    }
    gw = start_gateway(work / "gw", policies, keys=keys, config=config)
    try:
        yield Env(backend, gw, work / "gw" / "audit.jsonl", record, redis)
    finally:
        gw.stop()
        if redis is not None:
            redis.stop()


RW: dict[str, Any] = {"tenant": "acme", "scopes": ["read", "write"]}


@pytest.fixture(scope="module", params=["embedded", "redis"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ups: Upstreams) -> Iterator[Env]:
    """A gateway with the default session caps."""
    servers = {
        "example": {"upstreams": [{"url": ups.example}], "owner": "acme"},
        "public": {"upstreams": [{"url": ups.example}], "owner": "acme", "auth": {"anonymous": True}},
        "legacy": {"upstreams": [{"url": ups.legacy}], "owner": "acme", "transport": "sse"},
        "ws": {"upstreams": [{"url": ups.ws}], "owner": "acme", "transport": "websocket"},
        "rec": {"upstreams": [{"url": ups.rec}], "owner": "acme"},
        "fixed": {"upstreams": [{"url": ups.fixed}], "owner": "acme"},
    }
    keys: dict[str, dict[str, Any]] = {
        "victim": RW,
        "other": RW,
        "reader": {"tenant": "acme", "scopes": ["read"]},  # the attacker: a read-only key of the victim's tenant
        "slow": {**RW, "rate_limit": {"rate": 2, "per": "minute"}},
    }
    tenants = {"acme": {"servers": list(servers)}}
    yield from _gateway(
        tmp_path_factory.mktemp(f"sessions-{request.param}"), request.param, servers, tenants, keys, ups.record, {}
    )


@pytest.fixture(scope="module", params=["embedded", "redis"])
def capped(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ups: Upstreams) -> Iterator[Env]:
    """A gateway with small session caps (PER_KEY, PER_TENANT); each test uses a tenant of its own."""
    servers: dict[str, Any] = {}
    tenants: dict[str, Any] = {}
    for tenant in ("keycap", "tenantcap", "legacycap", "burst"):
        name = f"rec_{tenant}"
        if tenant == "legacycap":
            servers[name] = {"upstreams": [{"url": ups.legacy}], "owner": tenant, "transport": "sse"}
        else:
            servers[name] = {"upstreams": [{"url": ups.rec}], "owner": tenant}
        tenants[tenant] = {"servers": [name]}
    keys: dict[str, dict[str, Any]] = {
        "k1": {"tenant": "keycap", "scopes": ["read", "write"]},
        "k2": {"tenant": "keycap", "scopes": ["read"]},
        "t1": {"tenant": "tenantcap", "scopes": ["read", "write"]},
        "t2": {"tenant": "tenantcap", "scopes": ["read", "write"]},
        "l1": {"tenant": "legacycap", "scopes": ["read", "write"]},
        "b1": {"tenant": "burst", "scopes": ["read", "write"]},
    }
    caps = {"max_sessions_per_key": PER_KEY, "max_sessions_per_tenant": PER_TENANT}
    yield from _gateway(
        tmp_path_factory.mktemp(f"sessions-capped-{request.param}"),
        request.param,
        servers,
        tenants,
        keys,
        ups.record,
        caps,
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _modern(method: str, rpc_id: int = 9, version: str = PROTOCOL) -> tuple[dict[str, Any], dict[str, str]]:
    """What the attacker of finding 2 sent: `params._meta` protocolVersion set (which made the gateway classify the
    request as 2026-07-28, whatever version it names) and the mirrored headers that classification checks. With a
    version the upstream speaks (the default), the upstream then served the request inside the victim's session."""
    body = rpc(method, {"_meta": {META: version}}, rpc_id)
    return body, {"MCP-Protocol-Version": version, "Mcp-Method": method}


async def _refused_as_unknown(env: Env, ans: Answer, *, foreign: bool = True) -> None:
    """404 session_not_found (the answer for an unknown session), audited; the record says the id was someone
    else's when it was."""
    assert_refused(ans, 404, SESSION_UNKNOWN, "session_not_found")
    rec = await audit_record(env.audit, ans.request_id)
    assert rec["decision"] == "refused" and rec["reason"] == "session_not_found", rec
    if foreign:
        assert (rec.get("notes") or {}).get("session") == "foreign", rec


# ------------------------------------------------------------------------------------------------ finding 2


async def test_modern_era_claim_cannot_take_over_a_session(env: Env, http: aiohttp.ClientSession) -> None:
    """The exact reproduction: a read-only key of the same tenant sends the victim's Mcp-Session-Id in a request
    that claims 2026-07-28. It is refused like any foreign session; the victim's SDK session goes on; the binding
    still belongs to the victim."""
    sid_box: list[str] = []
    async with (
        httpx.AsyncClient(headers=env.h("victim"), timeout=30) as client,
        streamable_http_client(env.gw.url(), http_client=client) as (r, w, get_sid),
        ClientSession(r, w) as victim,
    ):
        await victim.initialize()
        sid = get_sid()
        assert sid
        sid_box.append(sid)
        for version in (PROTOCOL, MODERN):
            for method in ("tools/list", "ping"):
                body, hdrs = _modern(method, version=version)
                ans = await post(http, env.gw.url(), body, env.h("reader", **hdrs), session_id=sid)
                await _refused_as_unknown(env, ans)
        # the attacker's refusal changed nothing: the victim's session still answers, on every later call too
        res = await victim.call_tool("add", {"a": 2, "b": 40})
        assert res.content[0].text == "42"  # type: ignore[union-attr]
        assert {t.name for t in (await victim.list_tools()).tools} >= {"add", "echo"}
        if env.redis is not None:
            assert await env.owner("example", sid) == "api_key:acme:victim"
        # and the attacker is still refused afterwards (the binding did not move to it)
        body, hdrs = _modern("tools/list", 10)
        await _refused_as_unknown(env, await post(http, env.gw.url(), body, env.h("reader", **hdrs), session_id=sid))


async def test_anonymous_caller_cannot_take_over_an_anonymous_session(env: Env, http: aiohttp.ClientSession) -> None:
    """Anonymous sessions are bound to the client address: another anonymous caller presenting the id, whatever era
    it claims, is refused, and the owner's session goes on."""
    url = env.gw.url("public")
    victim = {"X-Forwarded-For": "198.51.100.1"}
    sid = await open_session(http, url, victim)
    for attacker in ({"X-Forwarded-For": "198.51.100.2"}, {}):
        for version in (PROTOCOL, MODERN):
            body, hdrs = _modern("tools/list", version=version)
            await _refused_as_unknown(env, await post(http, url, body, {**attacker, **hdrs}, session_id=sid))
        await _refused_as_unknown(env, await post(http, url, rpc("tools/list", rpc_id=3), attacker, session_id=sid))
    own = await post(http, url, rpc("tools/list", rpc_id=4), victim, session_id=sid)
    assert own.status == 200, own.body
    # served: an anonymous (read-only) caller's list holds what it may call, here nothing (issue 16)
    assert own.body["result"]["tools"] == []


@pytest.mark.parametrize("shape", ["legacy_post", "modern_post", "batch", "get_stream", "resume_stream"])
async def test_foreign_session_id_refused_whatever_the_request_shape(
    env: Env, http: aiohttp.ClientSession, shape: str
) -> None:
    """Every method and era that carries a session id is checked against its binding."""
    url = env.gw.url()
    sid = await open_session(http, url, env.h("victim"))
    # a read-only key, or another read-write key for the tool call (the read-only one is refused that by its scope)
    attacker = env.h("other") if shape == "modern_post" else env.h("reader")
    if shape == "legacy_post":
        ans = await post(http, url, rpc("tools/list", rpc_id=5), attacker, session_id=sid)
    elif shape == "modern_post":
        body, hdrs = _modern("tools/call", 5)
        body["params"].update({"name": "echo", "arguments": {"text": "x"}})
        ans = await post(http, url, body, {**attacker, **hdrs, "Mcp-Name": "echo"}, session_id=sid)
    elif shape == "batch":
        batch: Any = [rpc("tools/list", rpc_id=5), rpc("ping", rpc_id=6)]
        ans = await post(http, url, batch, {**attacker, "MCP-Protocol-Version": "2025-03-26"}, session_id=sid)
    else:
        headers = {
            **attacker,
            "Accept": "text/event-stream",
            "Mcp-Session-Id": sid,
            "X-Request-ID": os.urandom(8).hex(),
        }
        headers["MCP-Protocol-Version"] = PROTOCOL
        if shape == "resume_stream":
            headers["Last-Event-ID"] = "0"
        async with http.get(url, headers=headers) as r:
            ans = Answer(r.status, CIMultiDict(r.headers), await r.json(), headers["X-Request-ID"])
    await _refused_as_unknown(env, ans)
    own = await post(http, url, rpc("tools/list", rpc_id=7), env.h("victim"), session_id=sid)
    assert own.status == 200, own.body


async def test_delete_of_another_callers_session_is_refused(env: Env, http: aiohttp.ClientSession) -> None:
    url = env.gw.url()
    sid = await open_session(http, url, env.h("victim"))
    for attacker in (env.h("reader"), env.h("reader", **{"MCP-Protocol-Version": MODERN})):
        rid = os.urandom(8).hex()
        headers = {**attacker, "Mcp-Session-Id": sid, "X-Request-ID": rid}
        async with http.delete(url, headers=headers) as r:
            await _refused_as_unknown(env, Answer(r.status, CIMultiDict(r.headers), await r.json(), rid))
    assert (await post(http, url, rpc("tools/list", rpc_id=8), env.h("victim"), session_id=sid)).status == 200
    # the owner may end it, and then it is gone for everyone
    async with http.delete(url, headers={**env.h("victim"), "Mcp-Session-Id": sid}) as r:
        assert r.status in (200, 204), await r.text()
    gone = await post(http, url, rpc("tools/list", rpc_id=9), env.h("victim"), session_id=sid)
    assert_refused(gone, 404, SESSION_UNKNOWN, "session_not_found")
    if env.redis is not None:
        assert await env.owner("example", sid) is None


async def test_foreign_session_id_refused_on_legacy_sse_and_websocket(env: Env, http: aiohttp.ClientSession) -> None:
    """Legacy HTTP+SSE names its session in the POST URL and a WebSocket is its own session; an Mcp-Session-Id
    header there is still checked (never forwarded), so another caller's id is refused on these transports too."""
    stream = await http.get(env.gw.url("legacy"), headers={**env.h("victim"), "Accept": "text/event-stream"})
    assert stream.status == 200
    try:
        endpoint = await EventReader(stream).next()
        assert endpoint.event == "endpoint" and endpoint.data is not None
        victim_sid = endpoint.data.split("session_id=")[1]
        init = initialize_msg()
        # the victim's endpoint, posted to by another key
        rid = os.urandom(8).hex()
        async with http.post(
            env.gw.base + endpoint.data, json=init, headers={**env.h("reader"), "X-Request-ID": rid}
        ) as r:
            await _refused_as_unknown(env, Answer(r.status, CIMultiDict(r.headers), await r.json(), rid))
        # the attacker's own legacy session, plus the victim's id in the header
        own = await http.get(env.gw.url("legacy"), headers={**env.h("reader"), "Accept": "text/event-stream"})
        try:
            own_endpoint = await EventReader(own).next()
            assert own_endpoint.data is not None
            rid = os.urandom(8).hex()
            headers = {**env.h("reader"), "Mcp-Session-Id": victim_sid, "X-Request-ID": rid}
            async with http.post(env.gw.base + own_endpoint.data, json=init, headers=headers) as r:
                await _refused_as_unknown(env, Answer(r.status, CIMultiDict(r.headers), await r.json(), rid))
        finally:
            own.close()
        # a new legacy stream that presents the victim's id
        rid = os.urandom(8).hex()
        headers = {**env.h("reader"), "Accept": "text/event-stream", "Mcp-Session-Id": victim_sid, "X-Request-ID": rid}
        async with http.get(env.gw.url("legacy"), headers=headers) as r:
            await _refused_as_unknown(env, Answer(r.status, CIMultiDict(r.headers), await r.json(), rid))
        # the victim's own session is untouched: its POST is accepted (the answer arrives on its stream)
        async with http.post(env.gw.base + endpoint.data, json=init, headers=env.h("victim")) as r:
            assert r.status == 202, await r.text()
    finally:
        stream.close()
    # a WebSocket upgrade presenting a streamable session id of the victim
    sid = await open_session(http, env.gw.url(), env.h("victim"))
    rid = os.urandom(8).hex()
    upgrade = {
        **env.h("reader"),
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Protocol": "mcp",
        "Mcp-Session-Id": sid,
        "X-Request-ID": rid,
    }
    async with http.get(env.gw.url("ws"), headers=upgrade) as r:
        await _refused_as_unknown(env, Answer(r.status, CIMultiDict(r.headers), await r.json(), rid), foreign=False)


async def test_upstream_reissuing_a_bound_session_id_does_not_hand_it_over(
    env: Env, http: aiohttp.ClientSession
) -> None:
    """An upstream that answers another caller's initialize with a session id already bound to the victim: the
    answer is refused (502), the binding keeps its owner, and the victim goes on."""
    url = env.gw.url("fixed")
    sid = await open_session(http, url, env.h("victim"))
    rid = os.urandom(8).hex()
    ans = await post(http, url, initialize_msg(), {**env.h("other"), "X-Request-ID": rid})
    assert_refused(ans, 502, -31006, "upstream_protocol_error")
    assert "Mcp-Session-Id" not in ans.headers
    rec = await audit_record(env.audit, rid)
    assert rec["reason"] == "upstream_protocol_error", rec
    own = await post(http, url, rpc("ping", rpc_id=2), env.h("victim"), session_id=sid)
    assert own.status == 200, own.body
    stolen = await post(http, url, rpc("ping", rpc_id=3), env.h("other"), session_id=sid)
    await _refused_as_unknown(env, stolen)
    if env.redis is not None:
        assert await env.owner("fixed", sid) == "api_key:acme:victim"


# ------------------------------------------------------------------------------------------------ finding 8


async def test_duplicate_session_id_header_is_refused(env: Env, http: aiohttp.ClientSession) -> None:
    """Two Mcp-Session-Id headers (the caller's own and someone else's) never reach the upstream: 400."""
    url = env.gw.url("rec")
    mine = await open_session(http, url, env.h("victim"))
    theirs = await open_session(http, url, env.h("other"))
    refused: set[str] = set()
    for method in ("POST", "GET", "DELETE"):
        for order in ((mine, theirs), (theirs, mine)):
            rid = os.urandom(8).hex()
            headers: CIMultiDict[str] = CIMultiDict(env.h("victim"))
            headers.update({"Accept": ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": PROTOCOL})
            headers["X-Request-ID"] = rid
            refused.add(rid)
            for sid in order:
                headers.add("Mcp-Session-Id", sid)
            data = json.dumps(rpc("tools/list", rpc_id=1)) if method == "POST" else None
            async with http.request(method, url, headers=headers, data=data) as r:
                ans = Answer(r.status, CIMultiDict(r.headers), await r.json(), rid)
            assert_refused(ans, 400, INVALID_REQUEST, "duplicate_session_id")
            rec = await audit_record(env.audit, rid)
            assert rec["decision"] == "refused" and rec["reason"] == "duplicate_session_id", rec
    # a session id no upstream could have issued is refused before any lookup (bounded before it is used)
    for bad in ("x" * 2000, "two words"):
        rid = os.urandom(8).hex()
        refused.add(rid)
        ans = await post(
            http, url, rpc("tools/list", rpc_id=2), {**env.h("victim"), "X-Request-ID": rid}, session_id=bad
        )
        assert_refused(ans, 400, INVALID_REQUEST, "invalid_session_id")
    assert _reached(env.record, refused) == []  # none of these reached the upstream
    # a well-formed request still reaches the upstream with exactly its own, checked session id
    rid = os.urandom(8).hex()
    ok = await post(http, url, rpc("tools/list", rpc_id=3), {**env.h("victim"), "X-Request-ID": rid}, session_id=mine)
    assert ok.status == 200, ok.body
    assert [r["headers"].get("mcp-session-id") for r in _reached(env.record, {rid})] == [mine]


async def test_session_creation_counts_against_rate_limits(env: Env, http: aiohttp.ClientSession) -> None:
    """initialize is no longer free: a key limited to 2 requests a minute opens 2 sessions, not 1,000."""
    url = env.gw.url("rec")
    for _ in range(2):
        ans = await post(http, url, initialize_msg(), env.h("slow"))
        assert ans.status == 200, ans.body
    ans = await post(http, url, initialize_msg(), env.h("slow"))
    assert_refused(ans, 429, RATE_LIMITED, "rate_limited")
    assert ans.error["data"]["limit"] == "key"


def _reached(record: Path, request_ids: set[str]) -> list[dict[str, Any]]:
    """What the recording upstream received of these requests (it also sees the gateway's own health probes)."""
    return [r for r in recorded(record) if r["headers"].get("x-request-id") in request_ids]


async def test_session_cap_per_key_refuses_beyond(capped: Env, http: aiohttp.ClientSession) -> None:
    """One key opens at most PER_KEY sessions; the next initialize is refused with 429 before the upstream is asked,
    audited and counted; another key of the tenant is not affected; ending a session frees a place."""
    env = capped
    url = env.gw.url("rec_keycap")
    sids = [await open_session(http, url, env.h("k1")) for _ in range(PER_KEY)]
    rid = os.urandom(8).hex()
    ans = await post(http, url, initialize_msg(), {**env.h("k1"), "X-Request-ID": rid})
    assert_refused(ans, 429, CONCURRENCY_LIMITED, "session_limit")
    assert ans.error["data"]["limit"] == "key_sessions" and ans.error["data"]["cap"] == PER_KEY
    assert int(ans.headers["Retry-After"]) >= 1
    assert _reached(env.record, {rid}) == []  # the upstream never saw it
    rec = await audit_record(env.audit, rid)
    assert rec["decision"] == "refused" and rec["reason"] == "session_limit", rec
    async with http.get(f"{env.gw.base}/metrics") as r:
        metrics = await r.text()
    refused = [line for line in metrics.splitlines() if "decisions_total" in line and 'reason="session_limit"' in line]
    assert refused and float(refused[0].rsplit(" ", 1)[1]) >= 1, refused
    # the same key's existing sessions go on, and another key of the tenant still opens one
    assert (await post(http, url, rpc("tools/list", rpc_id=2), env.h("k1"), session_id=sids[-1])).status == 200
    await open_session(http, url, env.h("k2"))
    # ending one session frees its place
    async with http.delete(url, headers={**env.h("k1"), "Mcp-Session-Id": sids[0]}) as r:
        assert r.status in (200, 204)
    await open_session(http, url, env.h("k1"))
    assert_refused(await post(http, url, initialize_msg(), env.h("k1")), 429, CONCURRENCY_LIMITED, "session_limit")


async def test_session_cap_per_tenant_refuses_beyond(capped: Env, http: aiohttp.ClientSession) -> None:
    """The tenant's cap holds across its keys."""
    env = capped
    url = env.gw.url("rec_tenantcap")
    for _ in range(PER_KEY):
        await open_session(http, url, env.h("t1"))
    for _ in range(PER_TENANT - PER_KEY):
        await open_session(http, url, env.h("t2"))
    ans = await post(http, url, initialize_msg(), env.h("t2"))
    assert_refused(ans, 429, CONCURRENCY_LIMITED, "session_limit")
    data = ans.error["data"]
    assert (data["limit"], data["cap"], data["stage"]) == ("tenant_sessions", PER_TENANT, "session"), data


async def test_legacy_sse_streams_count_as_sessions(capped: Env, http: aiohttp.ClientSession) -> None:
    """A legacy HTTP+SSE stream creates a session, so it takes a place under the caps too; closing it frees it."""
    env = capped
    url = env.gw.url("rec_legacycap")
    headers = {**env.h("l1"), "Accept": "text/event-stream"}
    streams: list[aiohttp.ClientResponse] = []
    try:
        for _ in range(PER_KEY):
            resp = await http.get(url, headers=headers)
            streams.append(resp)
            assert resp.status == 200
            assert (await EventReader(resp).next()).event == "endpoint"
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 429
            err = (await resp.json())["error"]
        assert (err["code"], err["data"]["reason"], err["data"]["limit"]) == (
            CONCURRENCY_LIMITED,
            "session_limit",
            "key_sessions",
        )
        streams.pop(0).close()  # its session ends with its stream
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            resp = await http.get(url, headers=headers)
            if resp.status == 200:
                streams.append(resp)
                break
            resp.close()
            assert asyncio.get_running_loop().time() < deadline, "a closed stream never gave its place back"
            await asyncio.sleep(0.1)
    finally:
        for s in streams:
            s.close()


async def test_concurrent_initialize_burst_stays_under_the_cap(capped: Env) -> None:
    """Places are reserved before the upstream is asked, so a burst of parallel initializes cannot overshoot."""
    env = capped
    url = env.gw.url("rec_burst")
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(post(http, url, initialize_msg(), env.h("b1")) for _ in range(20)))
    statuses = sorted(a.status for a in answers)
    assert statuses == [200] * PER_KEY + [429] * (20 - PER_KEY), statuses
    assert all(a.error["data"]["reason"] == "session_limit" for a in answers if a.status == 429)
    # the refused ones never reached the upstream
    assert len(_reached(env.record, {a.request_id for a in answers})) == PER_KEY
