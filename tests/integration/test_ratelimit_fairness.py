"""Tenant fairness across three limiter replicas sharing a real Redis: the rate-limit stage itself (filter, Lua
store, demand exchange, allocator) driven directly, without HTTP, so the test takes seconds.

Capacity 120/s, three tenants of equal weight (fair share 40/s each). A offers 10x its share, B 0.3x, C 1x.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from gateway.auth.principal import Principal
from gateway.context import RequestContext
from gateway.errors import RateLimited
from gateway.filters.ratelimit import RateLimitFilter
from gateway.jsonrpc import parse_message
from gateway.policy.model import PolicySet
from gateway.policy.snapshot import Snapshot
from gateway.ratelimit.fairness import TenantDemand, jain_index, max_min_target
from gateway.ratelimit.metrics import RateLimitMetrics
from gateway.ratelimit.service import RateLimiter

pytestmark = pytest.mark.integration

CAPACITY = 120.0
SHARE = CAPACITY / 3
TENANTS = ("a", "b", "c")


def make_snapshot() -> Snapshot:
    policy = PolicySet.model_validate(
        {
            "servers": {"servers": {"s": {"upstreams": [{"url": "http://127.0.0.1:1/mcp"}]}}},
            "tenants": {"tenants": {t: {"weight": 1} for t in TENANTS}},
            "limits": {"global": {"rate": CAPACITY, "per": "second", "burst": 20}, "tiers": {}},
        }
    )
    return Snapshot.build(policy, "fair-test", Path("."), time.time())


class Replica:
    def __init__(self, url: str, prefix: str, snap: Snapshot) -> None:
        self.client = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(url, max_connections=20, timeout=1.0)
        )
        self.limiter = RateLimiter(RateLimitMetrics(CollectorRegistry()), self.client, prefix, lambda: snap)
        self.filter = RateLimitFilter(self.limiter.compiled(snap), self.limiter)


class Load:
    """Paced offered load per tenant, split evenly over the replicas; records the time of every admission."""

    def __init__(self, replicas: list[Replica], snap: Snapshot) -> None:
        self.replicas = replicas
        self.snap = snap
        self.rates: dict[str, float] = {}
        self.admitted: dict[str, list[float]] = {t: [] for t in TENANTS}
        self.errors: list[BaseException] = []
        self.msg = parse_message(orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))

    async def one(self, replica: Replica, tenant: str) -> None:
        ctx = RequestContext("r", self.snap, "s", self.snap.servers["s"], "10.0.0.1", "streamable-http", "POST")
        ctx.message = self.msg
        ctx.principal = Principal(tenant, f"key:{tenant}", key_id=tenant)
        try:
            await replica.filter(ctx)
        except RateLimited:
            return
        except Exception as exc:
            self.errors.append(exc)
            return
        self.admitted[tenant].append(time.monotonic())

    async def drive(self, replica: Replica, tenant: str, stop: list[float]) -> None:
        credit = 0.0
        last = time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        while (now := time.monotonic()) < stop[0]:
            rate = self.rates[tenant] / len(self.replicas)
            # pace by accumulated credit, so a change of rate takes effect at once
            credit = min(credit + (now - last) * rate, 50.0)
            last = now
            while credit >= 1.0:
                credit -= 1.0
                task = asyncio.create_task(self.one(replica, tenant))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.sleep(min(0.01, 1.0 / max(rate, 1.0)))
        if pending:
            await asyncio.gather(*pending)

    def served(self, tenant: str, t0: float, t1: float) -> float:
        return sum(1 for t in self.admitted[tenant] if t0 <= t < t1) / (t1 - t0)


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[list[Replica]]:
    prefix = f"mgwtest:{uuid.uuid4().hex[:8]}:"
    snap = make_snapshot()
    reps = [Replica(redis_url, prefix, snap) for _ in range(3)]
    for r in reps:
        r.limiter.start()
    try:
        yield reps
    finally:
        for r in reps:
            await r.limiter.stop()
        keys = [k async for k in reps[0].client.scan_iter(f"{prefix}*")]
        if keys:
            await reps[0].client.delete(*keys)
        for r in reps:
            await r.client.aclose()


def check_fair(load: Load, demand: dict[str, float], t0: float, t1: float) -> dict[str, float]:
    served = {t: load.served(t, t0, t1) for t in TENANTS}
    target = max_min_target(CAPACITY, {t: TenantDemand(d) for t, d in demand.items()})
    jain = jain_index([served[t] / target[t] for t in TENANTS])
    assert jain >= 0.95, (served, target, jain)
    assert sum(served.values()) >= 0.85 * CAPACITY, served
    assert sum(served.values()) <= CAPACITY * 1.05, served  # and never more than the global rate (+ burst)
    return served


async def test_skewed_demand_is_shared_fairly_and_follows_load(replicas: list[Replica]) -> None:
    snap = make_snapshot()
    load = Load(replicas, snap)
    demand = {"a": 10 * SHARE, "b": 0.3 * SHARE, "c": 1.0 * SHARE}
    load.rates = dict(demand)
    start = time.monotonic()
    stop = [start + 60.0]  # moved up once phase 2 begins
    drivers = [asyncio.create_task(load.drive(r, t, stop)) for r in replicas for t in TENANTS]

    # phase 1: shares settle within a few intervals; measure seconds 2.5..5.5
    await asyncio.sleep(5.5)
    served = check_fair(load, demand, start + 2.5, start + 5.5)
    assert served["b"] >= 0.9 * demand["b"], served
    every = [r.limiter.fair.shares for r in replicas]
    for shares in every[1:]:  # every replica enforces the same shares
        assert shares.keys() == every[0].keys()
        for t in shares:
            assert shares[t] == pytest.approx(every[0][t], rel=0.02)

    # phase 2: A and B swap; within 3 s the shares follow (measured from +3 s to the end)
    switch = time.monotonic()
    demand = {"a": 0.3 * SHARE, "b": 10 * SHARE, "c": 1.0 * SHARE}
    load.rates = dict(demand)
    stop[0] = switch + 5.0
    await asyncio.gather(*drivers)
    served = check_fair(load, demand, switch + 3.0, switch + 5.0)
    assert served["a"] >= 0.9 * demand["a"], served
    assert not load.errors, load.errors[:3]
