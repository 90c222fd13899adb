"""RedisSessionStore against a real Redis: shared bindings, TTL refreshed on use, expiry, and Redis going away."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.sessions import KEY_LIMIT, TAKEN, TENANT_LIMIT, MemorySessionStore, SessionBinding, SessionCaps
from gateway.sessions_redis import RedisSessionStore
from tests.harness import RedisInstance

pytestmark = pytest.mark.integration

B = SessionBinding("api_key:acme:k1", "srv", "http://up:1/mcp", tenant="acme")
LEGACY = SessionBinding("api_key:acme:k1", "srv", "http://up:1/sse", "http://up:1/messages/?session_id=s")


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    # the shared Redis never goes away in these tests: a generous timeout, so that a slow moment while the suite
    # loads both cores is not taken for an outage (the fault-injection tests below use private instances)
    c = aioredis.Redis.from_url(redis_url, socket_timeout=10)
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


async def _until_up(c: aioredis.Redis) -> None:
    for _ in range(100):
        try:
            await c.ping()
            return
        except Exception:
            await asyncio.sleep(0.05)
    raise AssertionError("redis did not come back")


async def test_binding_made_while_redis_is_down_is_written_back(private_redis: RedisInstance) -> None:
    """Issue 15 item 3: a binding saved only in process during an outage reaches Redis once it answers again."""
    c = aioredis.Redis.from_url(private_redis.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    store = RedisSessionStore(c, "t:", local=MemorySessionStore())
    other = RedisSessionStore(c, "t:")  # another replica
    try:
        private_redis.stop()
        assert await store.put("srv", "during", B) is None
        assert store.unsynced == 1
        assert await store.sync() == 1  # still down: kept for the next round
        private_redis.start()
        await _until_up(c)
        assert await store.sync() == 0
        assert await other.get("srv", "during") == B  # every replica knows it now
        assert await store.get("srv", "during") == B
    finally:
        await c.aclose()


async def test_binding_survives_an_empty_redis_restart(private_redis: RedisInstance) -> None:
    """Redis answering "not found" for a binding this replica holds means Redis lost it: written back, not dropped."""
    c = aioredis.Redis.from_url(private_redis.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    store = RedisSessionStore(c, "t:", local=MemorySessionStore())
    other = RedisSessionStore(c, "t:")
    try:
        assert await store.put("srv", "before", B) is None
        assert await other.get("srv", "before") == B  # the other replica served it too: it holds a copy
        private_redis.stop()
        private_redis.start()  # empty: no persistence
        await _until_up(c)
        assert await c.exists("t:sess:srv:before") == 0
        assert await other.get("srv", "before") == B  # restored from the other replica's copy
        assert await c.exists("t:sess:srv:before") == 1
        assert await store.get("srv", "before") == B
        # a session nobody here holds stays unknown: restoring never invents one
        assert await store.get("srv", "never-made") is None
    finally:
        await c.aclose()


async def test_session_ended_on_another_replica_is_not_brought_back(client: aioredis.Redis) -> None:
    """A DELETE on one replica ends the session for a replica holding a local copy (the tombstone), also when the
    end happened while Redis was unreachable for the ending replica (written back like a binding)."""
    prefix = f"mgwtest-{uuid.uuid4().hex}:"
    a, b = RedisSessionStore(client, prefix), RedisSessionStore(client, prefix)
    try:
        await a.put("srv", "s1", B)
        assert await b.get("srv", "s1") == B  # b holds a copy now
        await a.delete("srv", "s1")
        assert await b.get("srv", "s1") is None
        assert await b.get("srv", "s1") is None  # and the copy is gone for good
        # the tombstone does not stop the upstream from issuing the same id again later
        assert await a.put("srv", "s1", B) is None
        assert await b.get("srv", "s1") == B
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)


async def test_a_binding_never_changes_owner(client: aioredis.Redis) -> None:
    prefix = f"mgwtest-{uuid.uuid4().hex}:"
    thief = SessionBinding("api_key:acme:reader", "srv", "http://up:1/mcp", tenant="acme")
    a, b = RedisSessionStore(client, prefix), RedisSessionStore(client, prefix)
    mem = MemorySessionStore()
    try:
        assert await a.put("srv", "s1", B) is None
        assert await a.put("srv", "s1", thief) == TAKEN
        assert await b.put("srv", "s1", thief) == TAKEN  # a replica without a copy asks Redis
        assert await b.get("srv", "s1") == B
        assert await a.put("srv", "s1", B) is None  # the owner re-binding its own session is fine
        assert await mem.put("srv", "s1", B) is None
        assert await mem.put("srv", "s1", thief) == TAKEN
        assert await mem.get("srv", "s1") == B
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_session_caps_count_live_sessions(client: aioredis.Redis, backend: str) -> None:
    """Caps per principal and per tenant: reservations count, a taken reservation becomes the session, ended and
    idle-expired sessions free their place."""
    prefix = f"mgwtest-{uuid.uuid4().hex}:"
    caps = SessionCaps(per_key=2, per_tenant=3)
    store: MemorySessionStore | RedisSessionStore
    if backend == "memory":
        store = MemorySessionStore(ttl=0.5, caps=caps)
    else:
        store = RedisSessionStore(client, prefix, ttl=0.5, caps=caps)

    def binding(key: str) -> SessionBinding:
        return SessionBinding(f"api_key:acme:{key}", "srv", "http://up:1/mcp", tenant="acme")

    try:
        assert await store.reserve("api_key:acme:k1", "acme", "r1") is None
        assert await store.put("srv", "a", binding("k1"), reservation="r1") is None
        assert await store.reserve("api_key:acme:k1", "acme", "r2") is None
        assert await store.reserve("api_key:acme:k1", "acme", "r3") == KEY_LIMIT  # a + r2
        await store.release("api_key:acme:k1", "acme", "r2")
        assert await store.put("srv", "b", binding("k1")) is None  # unreserved: checked here
        assert await store.put("srv", "c", binding("k1")) == KEY_LIMIT
        assert await store.put("srv", "d", binding("k2")) is None
        assert await store.reserve("api_key:acme:k3", "acme", "r4") == TENANT_LIMIT  # a, b, d
        await store.delete("srv", "a")
        assert await store.reserve("api_key:acme:k3", "acme", "r4") is None
        await store.release("api_key:acme:k3", "acme", "r4")
        await asyncio.sleep(0.7)  # every session expires idle: their places come back without a DELETE
        assert await store.put("srv", "e", binding("k1")) is None
        assert await store.put("srv", "f", binding("k1")) is None
        assert await store.put("srv", "g", binding("k2")) is None
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)


async def test_an_owner_found_full_is_not_swept_again_on_every_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of refused initialize at the cap rescanned every member of the owner's set each time (0.8 ms of
    Redis per refusal at 2,048 sessions: review). A set a sweep found full counts as full for a while without
    sweeping, until a place is given back."""
    import gateway.sessions as sessions_module

    monkeypatch.setattr(sessions_module, "FULL_RECHECK_SECONDS", 60.0)
    store = MemorySessionStore(ttl=0.2, caps=SessionCaps(per_key=1, per_tenant=100))
    owner = "api_key:acme:k1"
    assert await store.put("srv", "a", SessionBinding(owner, "srv", "http://up:1/mcp", tenant="acme")) is None
    assert await store.reserve(owner, "acme", "r1") == KEY_LIMIT  # swept: still full, marked so
    await asyncio.sleep(0.4)  # "a" expires idle, without a DELETE
    assert await store.reserve(owner, "acme", "r2") == KEY_LIMIT  # not swept again within the mark
    await store.release(owner, "acme", "nothing-held")  # a place given back clears the mark
    assert await store.reserve(owner, "acme", "r3") is None  # swept now: the expired session is gone
