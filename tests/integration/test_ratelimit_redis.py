"""The Redis store and its failover against real Redis servers (shared one with unique prefixes; a private one for
kill/restart and SCRIPT FLUSH)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from gateway.net.redis_mux import RedisMux
from gateway.ratelimit.backend import LimiterBackend
from gateway.ratelimit.gcra import SlotCheck, TierCheck
from gateway.ratelimit.metrics import RateLimitMetrics
from gateway.ratelimit.redis_store import RedisLimiterStore
from tests.harness import RedisInstance, delete_redis_prefix

pytestmark = pytest.mark.integration


def client_for(url: str) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=10, timeout=0.25, socket_timeout=0.25, socket_connect_timeout=0.25
    )
    return aioredis.Redis(connection_pool=pool)


@pytest.fixture
async def shared(redis_url: str) -> AsyncIterator[tuple[aioredis.Redis, str]]:
    client = client_for(redis_url)
    prefix = f"mgwtest:{uuid.uuid4().hex[:8]}:"
    try:
        yield client, prefix
    finally:
        await client.aclose()
        # not with `client`: its 0.25 s socket timeout is for the limiter under test
        await delete_redis_prefix(redis_url, prefix)


def tier(name: str, rate: float, burst: float, cost: int = 1, shadow: bool = False) -> TierCheck:
    return TierCheck(name, f"k:{name}", 1.0 / rate, burst, cost, shadow, shared=True)


async def test_single_key_admits_burst_plus_rate_times_window(shared: tuple[aioredis.Redis, str]) -> None:
    client, prefix = shared
    store = RedisLimiterStore(client, prefix)
    rate, burst, window = 40.0, 10, 3.0  # a 10 s window scaled down: 130 expected, the +-1 bound unchanged
    t = tier("global", rate, burst)
    admitted = 0
    first_sent = first_back = last_sent = last_back = 0.0
    start = time.monotonic()
    while True:
        sent = time.monotonic()
        if sent - start >= window:
            break
        v = await store.decide([t], [], 0)
        back = time.monotonic()
        if admitted == 0 and v.allowed:
            first_sent, first_back = sent, back
        if v.allowed:
            admitted += 1
            last_sent, last_back = sent, back
    # Redis decided each request somewhere between its send and its answer
    low = burst + rate * (last_sent - first_back)
    high = burst + rate * (last_back - first_sent)
    assert low - 1 <= admitted <= high + 1, (admitted, low, high)
    assert admitted > burst + rate  # the window really ran: not just the burst


async def test_refused_by_one_tier_consumes_nothing(shared: tuple[aioredis.Redis, str]) -> None:
    client, prefix = shared
    store = RedisLimiterStore(client, prefix)
    big, small = tier("global", 0.01, 10), tier("key", 0.01, 1)
    assert (await store.decide([big, small], [], 0)).allowed
    for _ in range(5):
        v = await store.decide([big, small], [], 0)
        assert not v.allowed and v.refused_by is not None and v.refused_by.name == "key"
        assert v.refused_by.retry_after > 50
    alone = await store.decide([big], [], 0)
    assert alone.allowed and alone.tiers[0].remaining == 8


async def test_shadow_tier_reports_without_refusing(shared: tuple[aioredis.Redis, str]) -> None:
    client, prefix = shared
    store = RedisLimiterStore(client, prefix)
    shadow = tier("user", 0.01, 1, shadow=True)
    verdicts = [await store.decide([tier("global", 100, 100), shadow], [], 0) for _ in range(3)]
    assert all(v.allowed for v in verdicts)
    assert [len(v.shadow_refusals) for v in verdicts] == [0, 1, 1]


async def test_slots_cap_release_and_expiry(shared: tuple[aioredis.Redis, str]) -> None:
    client, prefix = shared
    store = RedisLimiterStore(client, prefix)
    cap = [SlotCheck("tenant_calls", "c:t:calls:acme", 2)]
    a = await store.decide([], cap, slot_ttl=1.0)
    b = await store.decide([], cap, slot_ttl=1.0)
    c = await store.decide([], cap, slot_ttl=1.0)
    assert a.allowed and b.allowed and not c.allowed
    assert c.slot_refused is not None and c.slot_refused.name == "tenant_calls"
    assert a.hold is not None
    await store.release(a.hold)
    assert (await store.decide([], cap, slot_ttl=1.0)).allowed
    # b and the last one are never released (their replica "crashed"): they expire after the TTL
    deadline = time.monotonic() + 5
    while not (await store.decide([], cap, slot_ttl=1.0)).allowed:
        assert time.monotonic() < deadline, "slots never expired"
        await asyncio.sleep(0.1)


async def test_refresh_keeps_a_live_slot(shared: tuple[aioredis.Redis, str]) -> None:
    client, prefix = shared
    store = RedisLimiterStore(client, prefix)
    cap = [SlotCheck("key_streams", "c:k:streams:k1", 1)]
    held = await store.decide([], cap, slot_ttl=1.0)
    assert held.allowed and held.hold is not None
    for _ in range(8):
        await asyncio.sleep(0.2)
        await store.refresh([held.hold], 1.0)
        assert not (await store.decide([], cap, slot_ttl=1.0)).allowed  # still held after 1.6 s > TTL


async def test_script_flush_mid_run_causes_no_error(private_redis: RedisInstance) -> None:
    client = client_for(private_redis.url)
    admin = aioredis.Redis.from_url(private_redis.url)
    metrics = RateLimitMetrics(CollectorRegistry())
    backend = LimiterBackend(RedisLimiterStore(client, "mgw:"), metrics)
    try:
        t = tier("global", 1000, 1000)
        for i in range(200):
            if i % 40 == 20:
                await admin.script_flush()
            v = await backend.decide([t], [], 0)
            assert v.allowed and v.backend == "redis"
        assert not backend.degraded
        stats = await admin.info("commandstats")
        assert stats["cmdstat_script|load"]["calls"] >= 5  # really reloaded after each of the 5 flushes
        assert stats["cmdstat_evalsha"]["failed_calls"] >= 5  # each flush was noticed as NOSCRIPT
    finally:
        await client.aclose()
        await admin.aclose()


async def test_redis_killed_falls_back_and_returns(private_redis: RedisInstance) -> None:
    client = client_for(private_redis.url)
    registry = CollectorRegistry()
    metrics = RateLimitMetrics(registry)
    backend = LimiterBackend(RedisLimiterStore(client, "mgw:"), metrics)
    backend.probe_interval = 0.25
    probe = asyncio.create_task(backend.probe_loop())
    t = tier("global", 1000, 50)
    try:
        assert (await backend.decide([t], [], 0)).backend == "redis"
        private_redis.stop()
        seen: set[str] = set()
        for _ in range(50):
            v = await backend.decide([t], [], 0, "fallback", 0.5)
            seen.add(v.backend)
            await asyncio.sleep(0.005)
        assert seen == {"fallback"}  # even the request that met the dead Redis was decided, in process
        assert backend.degraded
        assert registry.get_sample_value("mcp_gateway_ratelimit_fallback_active") == 1
        # a bucket first used after the switch starts empty: the switch admits no burst of its own (Redis may have
        # admitted this tier's whole burst just before it died)
        slow = tier("tenant", 0.001, 10)
        verdicts = [await backend.decide([slow], [], 0, "fallback", 0.5) for _ in range(20)]
        assert sum(v.allowed for v in verdicts) == 0
        # the fallback decides shared tiers at fallback_share of their rate and burst (each replica its part)
        assert (verdicts[0].tiers[0].burst, verdicts[0].tiers[0].interval) == (5, pytest.approx(2000.0))
        private_redis.start()
        back = time.monotonic()
        while backend.degraded:
            assert time.monotonic() - back < 2.0, "did not return to Redis within 2 s"
            await asyncio.sleep(0.02)
        # Redis came back empty: the tiers used in fallback were sealed there with empty buckets, so the way back
        # admits no burst either
        assert not (await backend.decide([slow], [], 0)).allowed
        assert (await backend.decide([t], [], 0)).backend == "redis"
        assert registry.get_sample_value("mcp_gateway_ratelimit_fallback_active") == 0
        assert (
            registry.get_sample_value("mcp_gateway_ratelimit_fallback_transitions_total", {"direction": "to_redis"})
            == 1
        )
    finally:
        probe.cancel()
        await client.aclose()


async def test_fail_modes_open_and_closed(private_redis: RedisInstance) -> None:
    from gateway.errors import ServiceUnavailable

    client = client_for(private_redis.url)
    backend = LimiterBackend(RedisLimiterStore(client, "mgw:"), RateLimitMetrics(CollectorRegistry()))
    t = tier("global", 0.001, 1)
    try:
        private_redis.stop()
        v = await backend.decide([t], [], 0, "open")
        assert v.allowed and v.backend == "open"
        assert (await backend.decide([t], [], 0, "open")).allowed  # open admits past the limit
        with pytest.raises(ServiceUnavailable):
            await backend.decide([t], [], 0, "closed")
    finally:
        await client.aclose()


async def test_pool_exhaustion_is_not_an_outage(shared: tuple[aioredis.Redis, str], redis_url: str) -> None:
    _, prefix = shared
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=1, timeout=0.0001)
    client = aioredis.Redis(connection_pool=pool)
    registry = CollectorRegistry()
    backend = LimiterBackend(RedisLimiterStore(client, prefix), RateLimitMetrics(registry))
    try:
        verdicts = await asyncio.gather(*(backend.decide([tier("global", 1000, 1000)], [], 0) for _ in range(30)))
        assert all(v.allowed for v in verdicts)
        backends = {v.backend for v in verdicts}
        assert backends == {"redis", "fallback"}, backends  # the busy ones were decided in process...
        assert not backend.degraded  # ...without declaring Redis down
        errors = registry.get_sample_value("mcp_gateway_ratelimit_store_errors_total", {"operation": "pool_exhausted"})
        assert errors is not None and errors > 0
        assert registry.get_sample_value("mcp_gateway_ratelimit_fallback_active") == 0
    finally:
        await client.aclose()


async def test_a_block_reaches_every_replica(shared: tuple[aioredis.Redis, str]) -> None:
    from gateway.ratelimit.ipblock import DdosParams, IpBlocker

    client, prefix = shared
    one = IpBlocker(RateLimitMetrics(CollectorRegistry()), client, prefix)
    two = IpBlocker(RateLimitMetrics(CollectorRegistry()), client, prefix)
    params = DdosParams(True, 2, 60.0, (30.0,), 3600.0, ())
    one.strike("203.0.113.9", params)
    one.strike("203.0.113.9", params)
    assert one.blocked_for("203.0.113.9") > 29
    assert two.blocked_for("203.0.113.9") == 0
    await one.sync_once()  # publishes
    await two.sync_once()  # adopts
    assert 28 < two.blocked_for("203.0.113.9") <= 30
    assert two.blocked_for("203.0.113.10") == 0


async def test_lua_script_matches_the_python_algorithm(shared: tuple[aioredis.Redis, str]) -> None:
    """decide.lua against gateway.ratelimit.gcra on the same random sequences, with Redis's clock replaced by the
    test's (the only line changed in the script), so both see exactly the same times."""
    from gateway.ratelimit.redis_store import LuaScript, script_source
    from gateway.ratelimit.store import MemoryStore

    client, prefix = shared
    clock_line = "local t = redis.call('TIME')"
    source = script_source("decide.lua")
    assert clock_line in source
    script = LuaScript(client, source.replace(clock_line, "local t = {ARGV[#ARGV - 1], ARGV[#ARGV]}"))
    store = RedisLimiterStore(client, prefix)
    rng = random.Random(20261126)
    for case in range(25):
        base_us = now_us = 1_790_000_000_000_000 + case * 10**12
        # the in-process store runs on time.monotonic (small numbers); give it the same times from 1000 s
        clock = [1000.0]
        memory = MemoryStore(lambda clock=clock: clock[0])
        shapes = [
            (f"t{i}", rng.choice([0.5, 1, 3, 10, 40]), rng.choice([1, 2, 5, 10]), rng.random() < 0.25)
            for i in range(rng.randint(1, 4))
        ]
        for step in range(40):
            now_us += rng.choice([0, 1000, 20_000, 150_000, 700_000])
            clock[0] = 1000.0 + (now_us - base_us) / 1e6
            cost = rng.choice([1, 1, 1, 2, 3])
            tiers = [TierCheck(n, f"p{case}:{n}", 1.0 / rate, burst, cost, shadow) for n, rate, burst, shadow in shapes]
            keys, args = store.script_call(tiers, [], 0, "")
            raw = await script(keys, [*args, now_us // 10**6, now_us % 10**6])
            admitted, _, lua = store.parse_result(tiers, raw)
            py = memory.decide_now(tiers, [], 0)
            where = (case, step, shapes, cost)
            assert admitted == py.allowed, where
            for a, b in zip(lua, py.tiers, strict=True):
                assert (a.allowed, a.remaining) == (b.allowed, b.remaining), (where, a, b)
                assert a.retry_after == pytest.approx(b.retry_after, abs=1e-5), (where, a, b)
                assert a.reset == pytest.approx(b.reset, abs=1e-5), (where, a, b)


async def test_a_repeated_tier_list_reuses_its_packed_call_and_still_decides(private_redis: RedisInstance) -> None:
    """The rate-limit stage hands the same tier list for every request of a client plan; the store packs its EVALSHA
    once for it. The packed call must still be a real decision every time (state moves, refusals come), survive a
    SCRIPT FLUSH, and be dropped when the list is a different object."""
    client = client_for(private_redis.url)
    admin = aioredis.Redis.from_url(private_redis.url)
    hot = RedisMux(host="127.0.0.1", port=private_redis.port)
    store = RedisLimiterStore(client, "mgw:", hot)
    try:
        tiers = [tier("key", 0.001, 3)]  # a burst of 3, then one more only after 1000 s
        got = [(await store.decide(tiers, [], 0)).allowed for _ in range(5)]
        assert got == [True, True, True, False, False]
        assert len(store._calls) == 1  # one packed call, reused by all five
        await admin.script_flush()
        v = await store.decide(tiers, [], 0)  # NOSCRIPT on the packed bytes: reloaded and decided
        assert not v.allowed and v.tiers[0].remaining == 0
        other = [tier("other", 0.001, 1)]
        assert (await store.decide(other, [], 0)).allowed
        assert not (await store.decide(other, [], 0)).allowed
        assert len(store._calls) == 2
        stats = await admin.info("commandstats")
        # NOSCRIPT twice: the first call ever (nothing loaded yet) and the packed bytes after the flush
        assert stats["cmdstat_evalsha"]["failed_calls"] == 2
    finally:
        await hot.aclose()
        await client.aclose()
        await admin.aclose()
