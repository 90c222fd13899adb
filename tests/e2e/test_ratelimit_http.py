"""Rate limiting through real gateway processes: the over-limit contract on HTTP, shared limits across three
gateways, Redis loss and return under load, IP blocks without Redis calls, concurrency caps, shadow mode."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Gateway, RedisInstance, default_policies, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

# these tests count refusals by their HTTP status (429), so their routes send every refusal with its own status;
# what the default (`compat_status_200: auto`) sends is asserted in test_over_limit_contract_on_http
OWN_STATUS = {"compat_status_200": False}

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
VERSION = "2025-06-18"
_IDS = itertools.count(1000)


def call(rid: int, name: str = "add", **args: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": args}}


async def post(http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str]) -> tuple[int, Any, Any]:
    async with http.post(url, json=body, headers={**ACCEPT, **headers}) as resp:
        data = await resp.read()
        parsed = None
        if resp.content_type == "application/json" and data:
            parsed = await resp.json()
        return resp.status, resp.headers, parsed


async def open_session(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> dict[str, str]:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    status, h, _ = await post(http, url, init, headers)
    assert status == 200, status
    sess = {**headers, "Mcp-Session-Id": h["Mcp-Session-Id"], "MCP-Protocol-Version": VERSION}
    status, _, _ = await post(http, url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sess)
    assert status == 202
    return sess


async def metric(http: aiohttp.ClientSession, gw: Gateway, name: str, **labels: str) -> float:
    async with http.get(f"{gw.base}/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def limits(**extra: Any) -> dict[str, Any]:
    return {"tiers": {}, **extra}


async def test_over_limit_contract_on_http(tmp_path: Path) -> None:
    up = start_upstream(tmp_path, json_response=True)
    pol = default_policies(up.url)
    pol["servers.yaml"]["servers"]["compat"] = {
        "upstreams": [{"url": up.url}],
        "owner": "acme",
        "compat_status_200": True,
    }
    # initialize costs 1 by default; made free here so the quota below counts tool calls only
    pol["limits.yaml"] = limits(costs={"initialize": 0})
    keys = {
        "k1": {"tenant": "acme", "scopes": ["read", "write"], "rate_limit": {"rate": 3, "per": "minute"}},
        "k2": {"tenant": "acme", "scopes": ["read", "write"], "rate_limit": {"rate": 2, "per": "minute"}},
    }
    gw = start_gateway(tmp_path / "gw", pol, keys=keys)
    with running(gw, up):
        async with aiohttp.ClientSession() as http:
            sess = await open_session(http, gw.url(), gw.auth("k1"))  # initialize made free above
            for i in range(1, 4):
                status, h, body = await post(http, gw.url(), call(i, a=i, b=1), sess)
                assert status == 200, body
                assert h["RateLimit-Policy"] == '"key";q=3;w=60'
                assert h["RateLimit"].startswith(f'"key";r={3 - i};t=')
            status, h, body = await post(http, gw.url(), call(4, a=1, b=1), sess)
            # a legacy-era call refused after authentication: 200 + the error under the default
            # `compat_status_200: auto` (docs/transports.md "Refusal status"); the headers are those of the 429
            assert status == 200
            assert h["Content-Type"].startswith("application/json")
            retry = int(h["Retry-After"])
            assert 1 <= retry <= 20  # one unit of a 3-per-minute key comes back within 20 s
            assert h["RateLimit-Policy"] == '"key";q=3;w=60'
            assert h["RateLimit"] == f'"key";r=0;t={retry}'
            assert body["id"] == 4 and body["jsonrpc"] == "2.0"
            err = body["error"]
            assert err["code"] == -31029
            assert err["data"] == {
                "reason": "rate_limited",
                "stage": "ratelimit",
                "retryAfterSeconds": retry,
                "limit": "key",
            }
            assert "retry" in err["message"].lower()
            # never limited: notifications (cancelled included) and responses to server requests
            cancelled = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 4}}
            assert (await post(http, gw.url(), cancelled, sess))[0] == 202
            response = {"jsonrpc": "2.0", "id": "srv-1", "result": {}}
            assert (await post(http, gw.url(), response, sess))[0] != 429
            # ping costs nothing by default
            status, _, body = await post(http, gw.url(), {"jsonrpc": "2.0", "id": 9, "method": "ping"}, sess)
            assert status == 200 and "result" in body

        # the per-route compat flag: HTTP 200 and the same JSON-RPC error, which the v1 SDK client can read
        async with (
            streamablehttp_client(gw.url("compat"), headers=gw.auth("k2")) as (r, w, _),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            assert (await s.call_tool("add", {"a": 1, "b": 2})).content[0].text == "3"  # type: ignore[union-attr]
            # the SDK spends part of the quota itself (tools/list for output schemas): call until refused
            with pytest.raises(McpError) as exc:
                for _ in range(3):
                    await s.call_tool("add", {"a": 1, "b": 2})
            assert exc.value.error.code == -31029
            assert exc.value.error.data["limit"] == "key"  # type: ignore[index]
            assert exc.value.error.data["retryAfterSeconds"] >= 1  # type: ignore[index]


async def test_shadow_limits_count_but_never_refuse(tmp_path: Path) -> None:
    up = start_upstream(tmp_path, json_response=True)
    pol = default_policies(up.url, **OWN_STATUS)
    pol["limits.yaml"] = limits(**{"global": {"rate": 1, "per": "minute", "burst": 1, "mode": "shadow"}})
    gw = start_gateway(tmp_path / "gw", pol, keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}})
    with running(gw, up):
        async with aiohttp.ClientSession() as http:
            sess = await open_session(http, gw.url(), gw.auth("k1"))
            for i in range(5):
                status, h, _ = await post(http, gw.url(), call(i, a=1, b=1), sess)
                assert status == 200
                assert "RateLimit" not in h  # a shadow tier is not advertised
            assert await metric(http, gw, "mcp_gateway_ratelimit_refusals_total", tier="global", mode="shadow") >= 4
            shadow = await metric(http, gw, "mcp_gateway_decisions_total", stage="ratelimit", decision="shadow_refused")
            assert shadow >= 4


async def _hammer(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], stop: float, statuses: list[int]
) -> None:
    while time.monotonic() < stop:
        try:
            # request ids must be unique within a session, and several hammers share one
            status, _, _ = await post(http, url, call(next(_IDS), a=1, b=2), headers)
        except aiohttp.ClientError:
            status = -1
        statuses.append(status)


async def test_three_gateways_never_exceed_the_global_limit(tmp_path: Path, redis_url: str) -> None:
    rate, burst, window = 20.0, 10, 3.0
    up = start_upstream(tmp_path, json_response=True)
    pol = default_policies(up.url, **OWN_STATUS)
    pol["limits.yaml"] = limits(**{"global": {"rate": rate, "per": "second", "burst": burst}})
    prefix = f"mgwtest:{uuid.uuid4().hex[:8]}:"
    cfg = {"redis": {"url": redis_url, "key_prefix": prefix}}
    keys = {"k1": {"tenant": "acme", "scopes": ["read", "write"]}}
    gws = [start_gateway(tmp_path / f"gw{i}", pol, keys=keys, config=cfg) for i in range(3)]
    with running(*gws, up):
        async with aiohttp.ClientSession() as http:
            # each gateway holds its own secret for key id k1 (the harness makes a fresh one per gateway)
            sessions = [await open_session(http, gw.url(), gw.auth("k1")) for gw in gws]
            statuses: list[list[int]] = [[] for _ in range(9)]
            start = time.monotonic()
            await asyncio.gather(
                *(_hammer(http, gws[i % 3].url(), sessions[i % 3], start + window, statuses[i]) for i in range(9))
            )
            elapsed = time.monotonic() - start
        client = aioredis.Redis.from_url(redis_url)
        found = [k async for k in client.scan_iter(f"{prefix}*")]
        if found:
            await client.delete(*found)
        await client.aclose()
    flat = [s for group in statuses for s in group]
    admitted = sum(1 for s in flat if s == 200)
    assert set(flat) <= {200, 429}, set(flat)
    assert admitted <= burst + rate * elapsed + 1, (admitted, elapsed)
    assert admitted >= 0.8 * rate * window, admitted  # and the limit was really used, not just refused
    assert flat.count(429) > admitted  # the offered load was well above the limit


async def test_redis_killed_mid_load_falls_back_and_returns(tmp_path: Path, private_redis: RedisInstance) -> None:
    up = start_upstream(tmp_path, json_response=True)
    pol = default_policies(up.url, **OWN_STATUS)
    # initialize made free: the decision counted at the end is the one tool call's
    limit = {"global": {"rate": 20, "per": "second", "burst": 10}, "costs": {"initialize": 0}}
    pol["limits.yaml"] = limits(**limit)
    cfg = {"redis": {"url": private_redis.url}}
    gw = start_gateway(tmp_path / "gw", pol, keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}}, config=cfg)
    with running(gw, up):
        async with aiohttp.ClientSession() as http:
            sess = await open_session(http, gw.url(), gw.auth("k1"))
            statuses: list[int] = []
            start = time.monotonic()
            load = [asyncio.create_task(_hammer(http, gw.url(), sess, start + 4.0, statuses)) for _ in range(3)]
            await asyncio.sleep(1.0)
            assert await metric(http, gw, "mcp_gateway_ratelimit_decisions_total", backend="redis") > 0
            private_redis.stop()
            deadline = time.monotonic() + 5
            while await metric(http, gw, "mcp_gateway_ratelimit_fallback_active") != 1:
                assert time.monotonic() < deadline, "fallback never engaged"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            private_redis.start()
            back = time.monotonic()
            while await metric(http, gw, "mcp_gateway_ratelimit_fallback_active") != 0:
                assert time.monotonic() - back < 2.0, "did not return to Redis within 2 s"
                await asyncio.sleep(0.05)
            await asyncio.gather(*load)
            assert await metric(http, gw, "mcp_gateway_ratelimit_decisions_total", backend="fallback") > 0
            before = await metric(http, gw, "mcp_gateway_ratelimit_decisions_total", backend="redis")
            # a new session after the restart (the old one would have survived it: the replica writes it back)
            sess = await open_session(http, gw.url(), gw.auth("k1"))
            status, _, _ = await post(http, gw.url(), call(99, a=1, b=1), sess)
            assert status in (200, 429)
            assert await metric(http, gw, "mcp_gateway_ratelimit_decisions_total", backend="redis") == before + 1
    assert statuses and all(0 < s < 500 for s in statuses), sorted(set(statuses))
    assert statuses.count(429) > 0 and statuses.count(200) > 0
    assert "redis unreachable" in gw.logs()


async def test_blocked_ip_is_refused_without_a_redis_call(tmp_path: Path, private_redis: RedisInstance) -> None:
    up = start_upstream(tmp_path, json_response=True)
    pol = default_policies(up.url, **OWN_STATUS)
    pol["limits.yaml"] = limits(ddos={"strikes": 3, "window_seconds": 60, "block_seconds": [30], "allowlist": []})
    cfg = {"redis": {"url": private_redis.url}}
    gw = start_gateway(tmp_path / "gw", pol, keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}}, config=cfg)
    admin = aioredis.Redis.from_url(private_redis.url)
    with running(gw, up):
        async with aiohttp.ClientSession() as http:
            sess = await open_session(http, gw.url(), gw.auth("k1"))
            assert (await post(http, gw.url(), call(1, a=1, b=1), sess))[0] == 200
            bad = {"Authorization": "Bearer mgw_k1_wrongsecretwrongsecret"}
            for _ in range(3):
                assert (await post(http, gw.url(), call(2, a=1, b=1), bad))[0] == 401
            stats = await admin.info("commandstats")
            evalsha_before = stats.get("cmdstat_evalsha", {}).get("calls", 0)
            total_before = (await admin.info("stats"))["total_commands_processed"]
            for i in range(100):
                status, h, body = await post(http, gw.url(), call(i, a=1, b=1), sess)  # even with a good key
                assert status == 429
                assert body["error"]["code"] == -31030 and body["error"]["data"]["reason"] == "ip_blocked"
                assert int(h["Retry-After"]) > 20
            stats = await admin.info("commandstats")
            total_after = (await admin.info("stats"))["total_commands_processed"]
            assert stats.get("cmdstat_evalsha", {}).get("calls", 0) == evalsha_before
            # only the background syncs (a few per second) ran meanwhile, nothing per request
            assert total_after - total_before < 60, (total_before, total_after)
            assert await metric(http, gw, "mcp_gateway_ratelimit_ip_blocked_requests_total") == 100
            # the block is published (by the once-a-second sync) for the other replicas
            deadline = time.monotonic() + 3
            while await admin.zscore("mgw:rl:blocks", "127.0.0.1") is None:
                assert time.monotonic() < deadline, "block never published"
                await asyncio.sleep(0.1)
    await admin.aclose()


async def test_limits_and_session_lookup_share_one_redis_round_trip(
    tmp_path: Path, private_redis: RedisInstance
) -> None:
    """The limiter's script and the session's GETEX leave in one write and come back in one read (issue 9): Redis
    reads about one command batch per request, not two."""
    up = start_upstream(tmp_path, json_response=True)
    pol = default_policies(up.url, **OWN_STATUS)
    pol["limits.yaml"] = limits(**{"global": {"rate": 100_000, "per": "second"}}, ddos={"enabled": False})
    # what is measured is the multiplexer (gateway/net/redis_mux.py): on even in the plain-network pass of make test
    cfg = {"redis": {"url": private_redis.url, "multiplex": True}}
    gw = start_gateway(tmp_path / "gw", pol, keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}}, config=cfg)
    admin = aioredis.Redis.from_url(private_redis.url)
    calls = 60
    try:
        with running(gw, up):
            async with aiohttp.ClientSession() as http:
                sess = await open_session(http, gw.url(), gw.auth("k1"))
                assert (await post(http, gw.url(), call(0, a=1, b=1), sess))[0] == 200  # hot connection up

                async def counts() -> tuple[int, int, int]:
                    stats = await admin.info("commandstats")
                    reads = (await admin.info("stats"))["total_reads_processed"]
                    return (
                        stats.get("cmdstat_evalsha", {}).get("calls", 0),
                        stats.get("cmdstat_getex", {}).get("calls", 0),
                        int(reads),
                    )

                evalsha0, getex0, reads0 = await counts()
                for i in range(calls):  # one at a time: nothing to coalesce across requests
                    status, _, body = await post(http, gw.url(), call(i + 1, a=i, b=1), sess)
                    assert status == 200 and "result" in body
                evalsha1, getex1, reads1 = await counts()
        # every request was decided in Redis and its session looked up there
        assert evalsha1 - evalsha0 == calls and getex1 - getex0 == calls
        # two round trips per request would be >= 2 reads each; a few background syncs and the two INFO calls
        # above add a handful
        assert reads1 - reads0 < calls * 1.5, (reads0, reads1)
    finally:
        await admin.aclose()


async def test_concurrent_tool_calls_are_capped_per_key(tmp_path: Path, redis_url: str) -> None:
    up = start_upstream(tmp_path, json_response=True)
    pol = default_policies(up.url, **OWN_STATUS)
    pol["limits.yaml"] = limits()
    prefix = f"mgwtest:{uuid.uuid4().hex[:8]}:"
    keys = {"k1": {"tenant": "acme", "scopes": ["read", "write"], "max_concurrent_calls": 1}}
    gw = start_gateway(tmp_path / "gw", pol, keys=keys, config={"redis": {"url": redis_url, "key_prefix": prefix}})
    with running(gw, up):
        async with aiohttp.ClientSession() as http:
            sess = await open_session(http, gw.url(), gw.auth("k1"))
            slow = asyncio.create_task(post(http, gw.url(), call(1, "count", n=4, delay=0.25), sess))
            await asyncio.sleep(0.4)
            status, h, body = await post(http, gw.url(), call(2, a=1, b=1), sess)
            assert status == 429
            assert body["error"]["code"] == -31031
            assert body["error"]["data"]["limit"] == "key_calls"
            assert "Retry-After" in h
            assert await metric(http, gw, "mcp_gateway_ratelimit_slots_held") == 1
            # other requests are not capped
            status, _, _ = await post(http, gw.url(), {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, sess)
            assert status == 200
            assert (await slow)[0] == 200
            # the slot came back when the call completed
            deadline = time.monotonic() + 3
            while (await post(http, gw.url(), call(4, a=1, b=1), sess))[0] != 200:
                assert time.monotonic() < deadline, "slot never released"
                await asyncio.sleep(0.05)
        client = aioredis.Redis.from_url(redis_url)
        # the release runs just after the answer is sent: nothing stays held once it has
        deadline = time.monotonic() + 3
        while await client.zcard(f"{prefix}rl:c:k:calls:k1") != 0:
            assert time.monotonic() < deadline, "a slot stayed held in Redis"
            await asyncio.sleep(0.05)
        found = [k async for k in client.scan_iter(f"{prefix}*")]
        if found:
            await client.delete(*found)
        await client.aclose()


async def test_open_streams_are_capped_per_tenant_and_released_on_disconnect(tmp_path: Path) -> None:
    up = start_upstream(tmp_path, json_response=True)
    pol = default_policies(up.url, **OWN_STATUS)
    pol["tenants.yaml"] = {"tenants": {"acme": {"servers": ["example"], "max_open_streams": 1}}}
    pol["limits.yaml"] = limits()
    gw = start_gateway(tmp_path / "gw", pol, keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}})
    with running(gw, up):
        async with aiohttp.ClientSession() as http:
            sess = await open_session(http, gw.url(), gw.auth("k1"))
            other = await open_session(http, gw.url(), gw.auth("k1"))
            get_headers = {**sess, "Accept": "text/event-stream"}
            first = await http.get(gw.url(), headers=get_headers)
            assert first.status == 200 and first.content_type == "text/event-stream"
            async with http.get(gw.url(), headers={**other, "Accept": "text/event-stream"}) as second:
                assert second.status == 429
                body = await second.json()
                assert body["error"]["code"] == -31031
                assert body["error"]["data"]["limit"] == "tenant_streams"
            first.close()  # the client goes away: the slot must come back
            deadline = time.monotonic() + 5
            while True:
                resp = await http.get(gw.url(), headers={**other, "Accept": "text/event-stream"})
                status = resp.status
                resp.close()
                if status == 200:
                    break
                assert status == 429, status
                assert time.monotonic() < deadline, "stream slot never released after the disconnect"
                await asyncio.sleep(0.1)
