"""RedisSessionStore against a real Redis: shared bindings, TTL refreshed on use, expiry, and Redis going away."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.sessions import MemorySessionStore, RedisSessionStore, SessionBinding
from tests.harness import RedisInstance

pytestmark = pytest.mark.integration

B = SessionBinding("api_key:acme:k1", "srv", "http://up:1/mcp")
LEGACY = SessionBinding("api_key:acme:k1", "srv", "http://up:1/sse", "http://up:1/messages/?session_id=s")


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url, socket_timeout=0.5)
    yield c
    await c.aclose()


async def test_two_stores_share_bindings(client: aioredis.Redis) -> None:
    prefix = f"mgwtest-{uuid.uuid4().hex}:"
    a, b = RedisSessionStore(client, prefix), RedisSessionStore(client, prefix)
    try:
        await a.put("srv", "s1", B)
        await a.put("srv", "s2", LEGACY)
        assert await b.get("srv", "s1") == B
        assert await b.get("srv", "s2") == LEGACY  # the legacy POST URL travels with the binding
        assert await b.get("other", "s1") is None
        await b.delete("srv", "s1")
        assert await a.get("srv", "s1") is None  # the local copy does not resurrect it
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)


async def test_ttl_expires_and_is_refreshed_on_use(client: aioredis.Redis) -> None:
    prefix = f"mgwtest-{uuid.uuid4().hex}:"
    store = RedisSessionStore(client, prefix, ttl=1.0)
    try:
        await store.put("srv", "live", B)
        await store.put("srv", "idle", B)
        for _ in range(4):  # 1.6 s in all, more than the TTL: only use keeps a binding alive
            await asyncio.sleep(0.4)
            assert await store.get("srv", "live") == B
        assert await store.get("srv", "idle") is None
        ttl_ms = await client.pttl(f"{prefix}sess:srv:live")
        assert 0 < ttl_ms <= 1000
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)


async def test_redis_down_falls_back_to_local_bindings(private_redis: RedisInstance) -> None:
    c = aioredis.Redis.from_url(private_redis.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    errors: list[str] = []
    store = RedisSessionStore(c, "t:", local=MemorySessionStore(), on_error=errors.append)
    other = RedisSessionStore(c, "t:")
    try:
        await other.put("srv", "elsewhere", B)
        await store.put("srv", "mine", B)
        private_redis.stop()
        assert await store.get("srv", "mine") == B  # created here: still served
        assert await store.get("srv", "elsewhere") is None  # unknown here: 404, the client re-initializes
        await store.put("srv", "new", B)
        assert await store.get("srv", "new") == B
        assert "get" in errors and "put" in errors
        private_redis.start()
        for _ in range(50):
            try:
                await c.ping()
                break
            except Exception:
                await asyncio.sleep(0.1)
        await store.put("srv", "after", B)
        assert await other.get("srv", "after") == B
    finally:
        await c.aclose()
