"""Sessions outlive a Redis blip (issue 15, item 3), through real gateway processes and the official MCP SDK client.

Before: a binding created while Redis was paused was kept only in process and never written to Redis, and a
"not found" from Redis deleted the local copy, so a session opened during a pause, or before an empty Redis restart,
failed every later call with 404 once Redis was back (the SDK does not re-initialize by itself).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import redis.asyncio as aioredis
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.test_identity_helpers import assert_refused, open_session, post, rpc
from tests.harness import Gateway, RedisInstance, api_key, default_policies, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

PREFIX = "mgwblip:"
CALLS = 8


KEY, KEY_HASH = api_key("k1")  # one key for every replica of a test


def _gateway(workdir: Path, upstream_url: str, redis: RedisInstance) -> Gateway:
    policies = default_policies(upstream_url)
    policies["limits.yaml"] = {"tiers": {}, "ddos": {"enabled": False}}
    policies["keys.yaml"] = {"keys": [{"id": "k1", "hash": KEY_HASH, "tenant": "acme", "scopes": ["read", "write"]}]}
    config = {"redis": {"url": redis.url, "key_prefix": PREFIX, "socket_timeout": 0.25}}
    gw = start_gateway(workdir, policies, config=config)
    gw.keys["k1"] = KEY
    return gw


@asynccontextmanager
async def sdk_session(gw: Gateway) -> AsyncIterator[tuple[ClientSession, str]]:
    async with (
        httpx.AsyncClient(headers=gw.auth("k1"), timeout=httpx.Timeout(30, read=60)) as http,
        streamable_http_client(gw.url(), http_client=http) as (r, w, get_sid),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        sid = get_sid()
        assert sid
        yield s, sid


async def _calls(s: ClientSession, n: int = CALLS) -> None:
    for i in range(n):
        res = await s.call_tool("add", {"a": i, "b": 1})
        assert not res.isError, res
        assert res.content[0].text == str(i + 1)  # type: ignore[union-attr]


async def _binding_in_redis(redis: RedisInstance, sid: str, timeout: float = 15.0) -> dict[str, Any]:
    client = aioredis.Redis.from_url(redis.url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                raw = await client.get(f"{PREFIX}sess:example:{sid}")
            except Exception:
                raw = None
            if raw is not None:
                found: dict[str, Any] = json.loads(raw)
                return found
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    raise AssertionError(f"binding of {sid} never reached redis")


async def test_session_opened_during_a_redis_pause_keeps_working(tmp_path: Path, private_redis: RedisInstance) -> None:
    up = start_upstream(tmp_path)
    gw = _gateway(tmp_path / "gw", up.url, private_redis)
    with running(gw, up):
        private_redis.proc.signal(signal.SIGSTOP)  # Redis hangs: every command times out
        try:
            async with sdk_session(gw) as (s, sid):
                await _calls(s, 3)  # during the pause, from the local copy
                private_redis.proc.signal(signal.SIGCONT)
                # once Redis answers again the binding is written back, and the session goes on
                found = await _binding_in_redis(private_redis, sid)
                assert found["p"] == "api_key:acme:k1" and found["s"] == "example"
                await _calls(s)
        finally:
            private_redis.proc.signal(signal.SIGCONT)
        assert "session store: bindings written back to redis" in gw.logs()


async def test_session_opened_before_an_empty_redis_restart_keeps_working(
    tmp_path: Path, private_redis: RedisInstance
) -> None:
    up = start_upstream(tmp_path)
    gw = _gateway(tmp_path / "gw", up.url, private_redis)
    with running(gw, up):
        async with sdk_session(gw) as (s, sid):
            await _calls(s, 2)
            await _binding_in_redis(private_redis, sid)
            private_redis.stop()
            await _calls(s, 2)  # Redis down: the local copy answers
            private_redis.start()  # empty: `--save ""`, no AOF
            await _calls(s)  # Redis says "not found": the replica writes its binding back instead of dropping it
            found = await _binding_in_redis(private_redis, sid)
            assert found["p"] == "api_key:acme:k1"


async def test_delete_on_one_replica_ends_the_session_on_the_other(
    tmp_path: Path, private_redis: RedisInstance
) -> None:
    """Restoring lost bindings must not resurrect ended sessions: B holds a copy of A's session, A ends it (owner's
    DELETE), B refuses it; an empty Redis restart before that does not change the owner check or the end."""
    up = start_upstream(tmp_path)
    a = _gateway(tmp_path / "a", up.url, private_redis)
    b = _gateway(tmp_path / "b", up.url, private_redis)
    with running(a, b, up):
        async with aiohttp.ClientSession() as http:
            sid = await open_session(http, a.url(), a.auth("k1"))
            assert (await post(http, b.url(), rpc("tools/list", rpc_id=2), b.auth("k1"), session_id=sid)).status == 200
            private_redis.stop()
            private_redis.start()
            # both replicas still serve it (each restores from its copy)
            for gw in (b, a):
                ans = await post(http, gw.url(), rpc("tools/list", rpc_id=3), gw.auth("k1"), session_id=sid)
                assert ans.status == 200, ans.body
            async with http.delete(a.url(), headers={**a.auth("k1"), "Mcp-Session-Id": sid}) as r:
                assert r.status in (200, 204), await r.text()
            for gw in (b, a):
                gone = await post(http, gw.url(), rpc("tools/list", rpc_id=4), gw.auth("k1"), session_id=sid)
                assert_refused(gone, 404, -31007, "session_not_found")
