"""Tenant fair shares, recomputed every `fairness.interval_seconds` from the demand of every replica.

Each replica counts the cost offered per tenant (refused requests included). At each interval boundary it adds its
counts to a Redis hash for that interval (`rl:fair:d:<epoch>`), waits a fifth of an interval for the other replicas
to do the same, reads the hash back and runs the allocator on it. Every replica reads the same totals and runs the
same deterministic allocation on the same policy, so all of them enforce the same shares. Without Redis (embedded,
or while Redis is down) the replica allocates on its own counts. None of this is on the request path: a request
only increments a dict entry and reads one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis
import structlog

from gateway.ratelimit.fairness import TenantDemand, allocate
from gateway.ratelimit.metrics import RateLimitMetrics

log = structlog.get_logger("gateway.ratelimit.fairness")

ANONYMOUS_TENANT = "_anonymous"


@dataclass(frozen=True, slots=True)
class FairParams:
    """The fairness inputs of one policy snapshot (compiled once per snapshot)."""

    capacity: float  # the global rate, cost units per second
    interval: float
    active_window: float
    headroom: float
    weights: Mapping[str, float] = field(default_factory=dict)
    reserved: Mapping[str, float] = field(default_factory=dict)
    # `tenant_default` as a rate: every tenant's ceiling (inf = none)
    ceiling: float = math.inf

    def demand(self, tenant: str, rate: float) -> TenantDemand:
        return TenantDemand(rate, self.weights.get(tenant, 1.0), self.reserved.get(tenant, 0.0), self.ceiling)


class DemandExchange(Protocol):
    async def publish(self, epoch: int, counts: Mapping[str, float]) -> None: ...

    async def collect(self, epoch: int) -> dict[str, float]: ...


class RedisDemandExchange:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = f"{prefix}rl:fair:d:"

    async def publish(self, epoch: int, counts: Mapping[str, float]) -> None:
        if not counts:
            return
        key = f"{self._prefix}{epoch}"
        async with self._client.pipeline(transaction=False) as pipe:
            for tenant, n in counts.items():
                pipe.hincrbyfloat(key, tenant, n)
            pipe.expire(key, 120)
            await pipe.execute()

    async def collect(self, epoch: int) -> dict[str, float]:
        raw = await self._client.hgetall(f"{self._prefix}{epoch}")
        return {(k.decode() if isinstance(k, bytes) else str(k)): float(v) for k, v in raw.items()}


class FairShares:
    """Per-tenant shares of the global rate, as this replica currently enforces them."""

    def __init__(
        self,
        params: Callable[[], FairParams | None],
        metrics: RateLimitMetrics,
        exchange: DemandExchange | None = None,
        use_exchange: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._params = params
        self._metrics = metrics
        self._exchange = exchange
        self._use_exchange = use_exchange
        self._clock = clock
        self._counts: defaultdict[str, float] = defaultdict(float)
        self._shares: dict[str, float] = {}
        self._last_seen: dict[str, float] = {}
        self._active_weight = 0.0
        self._current: FairParams | None = None
        self._labelled: set[str] = set()
        self.computed = 0  # completed recomputations (for tests and readiness of the first shares)

    def charge(self, tenant: str, cost: float) -> float | None:
        """Count the tenant's request cost, then `share(tenant)`: the rate-limit stage does both per request."""
        self._counts[tenant] += cost
        got = self._shares.get(tenant)
        if got is not None and self._current is not None:
            return got
        return self.share(tenant)

    def share(self, tenant: str) -> float | None:
        """The tenant's rate now; None when no fair share applies (fairness off or no global rate)."""
        params = self._current
        if params is None:
            params = self._current = self._params()
            if params is None:
                return None
        got = self._shares.get(tenant)
        if got is not None:
            return got
        # a tenant with no demand in the last interval: the share it would get beside the tenants active lately
        w = params.weights.get(tenant, 1.0)
        others = self._active_weight - (w if tenant in self._last_seen else 0.0)
        share = params.capacity * w / (others + w)
        share = min(share, params.ceiling)
        return max(share, params.reserved.get(tenant, 0.0), 1e-3)

    @property
    def shares(self) -> dict[str, float]:
        return dict(self._shares)

    def recompute(self, demand_counts: Mapping[str, float], params: FairParams | None, now: float) -> None:
        self._current = params
        if params is None:
            self._shares = {}
            return
        rates = {t: n / params.interval for t, n in demand_counts.items() if n > 0}
        for t in rates:
            self._last_seen[t] = now
        horizon = now - params.active_window
        for t in [t for t, seen in self._last_seen.items() if seen < horizon]:
            del self._last_seen[t]
        self._active_weight = sum(params.weights.get(t, 1.0) for t in self._last_seen)
        self._shares = allocate(params.capacity, {t: params.demand(t, r) for t, r in rates.items()}, params.headroom)
        self.computed += 1
        self._export(rates, params)

    def _export(self, rates: Mapping[str, float], params: FairParams) -> None:
        seen: set[str] = set()
        for tenant, share in self._shares.items():
            label = tenant if tenant in params.weights or tenant == ANONYMOUS_TENANT else "_other"
            if label in seen:
                continue  # several unknown tenants share one label; the first one's value stands for them
            seen.add(label)
            self._metrics.fair_share.labels(label).set(share)
            self._metrics.tenant_demand.labels(label).set(rates.get(tenant, 0.0))
        for label in self._labelled - seen:
            self._metrics.fair_share.remove(label)
            self._metrics.tenant_demand.remove(label)
        self._labelled = seen

    async def tick(self, epoch: int, params: FairParams | None) -> None:
        """Publish this replica's counts for `epoch`, wait for the others, read the totals and reallocate."""
        counts, self._counts = dict(self._counts), defaultdict(float)
        interval = params.interval if params else 1.0
        totals: Mapping[str, float] = counts
        if self._exchange is not None and self._use_exchange():
            try:
                await self._exchange.publish(epoch, counts)
                await asyncio.sleep(0.2 * interval)
                totals = await self._exchange.collect(epoch)
            except Exception as exc:  # Redis down: allocate on this replica's own demand
                log.debug("demand exchange failed; using local demand", error=type(exc).__name__)
                totals = counts
        self.recompute(totals, params, self._clock())

    async def run(self) -> None:
        while True:
            params = self._params()
            interval = params.interval if params else 1.0
            now = self._clock()
            epoch = math.floor(now / interval)
            # wake just after the boundary: counts then belong to the epoch that just ended, on every replica
            await asyncio.sleep((epoch + 1) * interval - now + 0.02 * interval)
            try:
                await self.tick(epoch, self._params())
            except Exception:
                log.exception("fair share recomputation failed")
