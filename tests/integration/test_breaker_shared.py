"""Breaker state shared through a real Redis: two registries stand for two gateway replicas.

Each "replica" has its own Redis client, registry and pub/sub listener; they share only Redis (unique key prefix
per test on the shared server; a private server where the test kills Redis).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from gateway.context import RequestContext, UpstreamOutcome
from gateway.errors import CircuitOpen
from gateway.filters.breaker import BreakerFilter
from gateway.policy.resilience import BreakerPolicy
from gateway.policy.servers import ServerPolicy
from gateway.resilience.registry import BreakerRegistry
from gateway.resilience.shared import RedisBreakerStore
from gateway.resilience.state import CircuitBreaker, State
from gateway.sessions import MemorySessionStore
from gateway.upstream.balancer import Balancer
from gateway.upstream.choice import UpstreamChoice
from tests.harness import RedisInstance, delete_redis_prefix

pytestmark = pytest.mark.integration

URL = "http://127.0.0.1:1/mcp"
POLICY = BreakerPolicy(consecutive_failures=2, open_seconds=0.4, half_open_probes=2, probe_timeout_seconds=30)


@dataclass
class Replica:
    client: aioredis.Redis
    registry: BreakerRegistry
    store: RedisBreakerStore

    def breaker(self, policy: BreakerPolicy = POLICY) -> CircuitBreaker:
        return self.registry.get("srv", URL, policy)


async def until(cond: Callable[[], bool], timeout: float, step: float = 0.01) -> float:
    """Poll `cond`; return the seconds it took. Fails the test after `timeout`."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(step)
    return time.monotonic() - start


async def make_replica(url: str, prefix: str) -> Replica:
    client = aioredis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)
    registry = BreakerRegistry()
    store = RedisBreakerStore(client, prefix, registry.find, call_timeout=0.25)
    registry.shared = store
    registry.get("srv", URL, POLICY)
    store.start()
    await until(lambda: store.available, 5)
    return Replica(client, registry, store)


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[Replica, Replica]]:
    prefix = f"mgwtest:{uuid.uuid4().hex[:10]}:"
    a = await make_replica(redis_url, prefix)
    b = await make_replica(redis_url, prefix)
    try:
        yield a, b
    finally:
        for r in (a, b):
            await r.store.stop()
        # not with the replicas' clients: their 0.25 s socket timeout is for the store under test
        await delete_redis_prefix(redis_url, prefix)
        for r in (a, b):
            await r.client.aclose()


def trip(br: CircuitBreaker) -> None:
    now = time.monotonic()
    for _ in range(br.policy.consecutive_failures):
        adm = br.admit(now)
        br.record(adm.gen, adm.probe, True, False, now)


async def test_open_on_one_replica_is_seen_by_the_other_within_a_second(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    trip(a.breaker())
    assert a.breaker().state is State.OPEN
    took = await until(lambda: b.breaker().state is State.OPEN, 1.0)
    assert took < 1.0
    assert b.breaker().gen == a.breaker().gen
    assert not b.breaker().admit(time.monotonic()).allowed


async def test_half_open_admits_exactly_n_probes_across_replicas_then_closes(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    trip(a.breaker())
    await until(lambda: b.breaker().state is State.OPEN, 1.0)
    await asyncio.sleep(POLICY.open_seconds + 0.05)

    async def ask(r: Replica) -> tuple[Replica, bool, int]:
        br = r.breaker()
        adm = br.admit(time.monotonic(), shared=r.store.available)
        if adm.coordinate:
            adm = await r.store.acquire(br)
        return r, adm.allowed and adm.probe, adm.gen

    results = await asyncio.gather(*(ask(r) for _ in range(10) for r in (a, b)))
    granted = [(r, gen) for r, ok, gen in results if ok]
    assert len(granted) == POLICY.half_open_probes
    # more requests while the probes are out are still refused, on both replicas
    assert not any(ok for _, ok, _ in await asyncio.gather(ask(a), ask(b)))
    for r, gen in granted:
        r.store.report_probe(r.breaker(), gen, ok=True)
    await until(lambda: a.breaker().state is State.CLOSED and b.breaker().state is State.CLOSED, 1.0)
    assert a.breaker().admit(time.monotonic()).allowed


async def test_a_failed_probe_reopens_everywhere_with_a_longer_open_time(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    trip(b.breaker())
    await until(lambda: a.breaker().state is State.OPEN, 1.0)
    await asyncio.sleep(POLICY.open_seconds + 0.05)
    adm = await a.store.acquire(a.breaker())
    assert adm.probe
    a.store.report_probe(a.breaker(), adm.gen, ok=False)
    await until(lambda: b.breaker().state is State.OPEN and b.breaker().trips == 2, 1.0)
    remaining = b.breaker().open_until - time.monotonic()
    assert POLICY.open_seconds < remaining <= POLICY.open_seconds * 2


async def test_racing_trips_agree_on_one_generation(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    trip(a.breaker())
    trip(b.breaker())
    await asyncio.sleep(0.3)
    assert a.breaker().state is State.OPEN and b.breaker().state is State.OPEN
    raw = await a.client.hget(f"{a.store.channel.rsplit('breaker:', 1)[0]}breaker:srv|{URL}", "gen")
    assert raw is not None
    assert a.breaker().gen == b.breaker().gen == int(raw)


def filter_ctx(srv: ServerPolicy) -> RequestContext:
    return RequestContext(
        request_id=uuid.uuid4().hex,
        snapshot=None,  # type: ignore[arg-type]
        server_name="srv",
        server=srv,
        client_ip="127.0.0.1",
        transport="streamable-http",
        http_method="POST",
    )


async def evalsha_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


async def test_closed_breakers_never_touch_redis_and_redis_down_means_local_decisions(
    private_redis: RedisInstance,
) -> None:
    prefix = f"mgwtest:{uuid.uuid4().hex[:10]}:"
    rep = await make_replica(private_redis.url, prefix)
    admin = aioredis.Redis.from_url(private_redis.url)
    srv = ServerPolicy.model_validate({"upstreams": [{"url": URL}], "breaker": POLICY.model_dump()})
    bal = Balancer(lambda s, u: True, lambda s, u: 0.0)
    flt = BreakerFilter(rep.registry, UpstreamChoice(MemorySessionStore(), bal))

    async def call(status: int | None, error: str | None = None) -> RequestContext:
        ctx = filter_ctx(srv)
        await flt(ctx)
        ctx.report_outcome(UpstreamOutcome(URL, status, error, 0.001))
        for release in reversed(ctx.releases):
            release()
        return ctx

    try:
        before = await evalsha_calls(admin)
        for _ in range(50):
            await call(200)
        assert await evalsha_calls(admin) == before  # closed: not one script call

        private_redis.stop()
        await until(lambda: not rep.store.available, 5)
        # Redis is gone: the breaker still trips, refuses and probes on its own
        for _ in range(POLICY.consecutive_failures):
            await call(None, "connect")
        assert rep.breaker().state is State.OPEN
        with pytest.raises(CircuitOpen):
            await call(200)
        await asyncio.sleep(POLICY.open_seconds + 0.05)
        for _ in range(POLICY.half_open_probes):
            await call(200)
        assert rep.breaker().state is State.CLOSED

        private_redis.start()
        await until(lambda: rep.store.available, 10, step=0.05)
    finally:
        await rep.store.stop()
        await rep.client.aclose()
        await admin.aclose()


async def test_a_breaker_redis_forgot_is_written_back_and_still_recovers(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    trip(a.breaker())
    await until(lambda: b.breaker().state is State.OPEN, 1.0)
    # Redis loses the state (restart without persistence, eviction): only this test's key is removed
    key = f"{a.store.channel.rsplit('breaker:', 1)[0]}breaker:srv|{URL}"
    assert await a.client.delete(key) == 1
    await asyncio.sleep(POLICY.open_seconds + 0.05)
    adm = await a.store.acquire(a.breaker())
    assert adm.allowed and adm.probe
    assert await a.client.hget(key, "state") == b"half_open"
    await until(lambda: b.breaker().state is State.HALF_OPEN, 1.0)
    second = await b.store.acquire(b.breaker())
    assert second.probe
    assert not (await a.store.acquire(a.breaker())).allowed  # N = 2 slots, both taken
    a.store.report_probe(a.breaker(), adm.gen, ok=True)
    b.store.report_probe(b.breaker(), second.gen, ok=True)
    await until(lambda: a.breaker().state is State.CLOSED and b.breaker().state is State.CLOSED, 1.0)
