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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis
import structlog

from gateway.ratelimit.fairness import TenantDemand, allocate
from gateway.ratelimit.metrics import RateLimitMetrics

log = structlog.get_logger("gateway.ratelimit.fairness")

ANONYMOUS_TENANT = "_anonymous"
# up to this many tenants with demand, the shares are allocated on the event loop (~60 us each; a thread hop
# costs more than that below)
INLINE_TENANTS = 16
# a tenant first counted part-way through an interval has its count scaled up to a whole interval, by at most
# 1 / MIN_SPAN (a handful of requests in an interval's last moments says little about a rate)
MIN_SPAN = 0.25


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
        # demand rates measured by the last recomputation, and the tenants that arrived since (demand not known yet)
        self._rates: dict[str, float] = {}
        self._newcomers: set[str] = set()
        # tenants first counted since the counts were last taken -> when: their count covers only part of it
        self._arrived: dict[str, float] = {}
        # tenants allotted less than they want: their own tier, not the global one, should be refusing them
        self._limited: set[str] = set()
        self._last_seen: dict[str, float] = {}
        self._active_weight = 0.0
        self._current: FairParams | None = None
        self._labelled: set[str] = set()
        # when the counts were last taken: the next count covers the time since, whatever interval was meant
        self._taken_at = clock()
        self.computed = 0  # completed recomputations (for tests and readiness of the first shares)

    def charge(self, tenant: str, cost: float) -> float | None:
        """Count the tenant's request cost and return its share: the rate-limit stage does both per request."""
        self._counts[tenant] += cost
        got = self._shares.get(tenant)
        if got is not None and self._current is not None:
            return got
        return self._arrive(tenant)

    def _arrive(self, tenant: str) -> float | None:
        """A tenant without a share (start-up, or a newcomer): every share is reallocated now, the newcomer taken
        to want the whole capacity until the next recomputation measures its demand.

        Waiting for that recomputation left the tenants already active holding the whole global rate for up to an
        interval (a newcomer got 8-9 of its 20 req/s for 3 s; at start-up the first tenant took all of it), and a
        tenant starved by the global tier meanwhile banked a full burst of its own tier to spend later. Runs once
        per tenant per recomputation, never per request; tenants come only from verified credentials."""
        params = self._params_now()
        if params is None:
            return None
        got = self._shares.get(tenant)
        if got is not None:
            return got
        self._arrived.setdefault(tenant, self._clock())
        if len(self._rates) + len(self._newcomers) >= INLINE_TENANTS:
            # with many tenants a reallocation per arrival is a bisection over all of them on the event loop (n
            # arrivals cost n^2: 7 s of loop time for 1,000): the newcomer gets its share beside the tenants active
            # lately, counted as limited (its bursts fit the global burst), and the next recomputation (in a
            # thread at that size) allocates it for real
            share = self.share(tenant)
            self._last_seen[tenant] = self._clock()
            self._active_weight += params.weights.get(tenant, 1.0)
            if share is not None:
                self._shares[tenant] = share
                self._limited.add(tenant)
            return share
        self._newcomers.add(tenant)
        self._last_seen[tenant] = self._clock()
        self._allocate(params, demands_of(params, self._rates, self._newcomers))
        return self._shares[tenant]

    def _allocate(
        self, params: FairParams, demands: Mapping[str, TenantDemand], shares: dict[str, float] | None = None
    ) -> None:
        """Adopt the allocation of `demands` (`shares` when it was already computed from them, off the loop)."""
        if shares is None:
            shares = allocate(params.capacity, demands, params.headroom)
        self._shares = shares
        self._limited = {
            t for t, d in demands.items() if shares[t] < min(d.ceiling, d.demand * (1.0 + params.headroom)) * 0.999
        }

    def _params_now(self) -> FairParams | None:
        """The fairness inputs in force: the last recomputation's, or the policy's before the first one."""
        if self._current is None:
            self._current = self._params()
        return self._current

    def limited(self, tenant: str) -> bool:
        """True when the tenant wants more than its share (or is new, its demand not measured yet)."""
        return tenant in self._limited

    def share(self, tenant: str) -> float | None:
        """The tenant's rate now; None when no fair share applies (fairness off or no global rate)."""
        params = self._params_now()
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

    def recompute(
        self,
        demand_counts: Mapping[str, float],
        params: FairParams | None,
        now: float,
        shares: dict[str, float] | None = None,
        newcomers: Iterable[str] = (),
    ) -> None:
        """Adopt the allocation of `demand_counts` and of `newcomers` (tenants not measured yet, taken to want the
        whole capacity); `shares`, when already computed from them."""
        self._current = params
        self._newcomers = set(newcomers)
        if params is None:
            self._shares = {}
            self._rates = {}
            self._limited = set()
            return
        rates = {t: n / params.interval for t, n in demand_counts.items() if n > 0}
        self._rates = rates
        for t in (*rates, *self._newcomers):
            self._last_seen[t] = now
        horizon = now - params.active_window
        for t in [t for t, seen in self._last_seen.items() if seen < horizon]:
            del self._last_seen[t]
        self._active_weight = sum(params.weights.get(t, 1.0) for t in self._last_seen)
        self._allocate(params, demands_of(params, rates, self._newcomers), shares)
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
        arrived, self._arrived = self._arrived, {}
        interval = params.interval if params else 1.0
        now = self._clock()
        since, self._taken_at = self._taken_at, now
        counts = per_interval(counts, arrived, since, now, interval)
        totals: Mapping[str, float] = counts
        if self._exchange is not None and self._use_exchange():
            try:
                await self._exchange.publish(epoch, counts)
                await asyncio.sleep(0.2 * interval)
                totals = await self._exchange.collect(epoch)
            except Exception as exc:  # Redis down: allocate on this replica's own demand
                log.debug("demand exchange failed; using local demand", error=type(exc).__name__)
                totals = counts
        shares = None
        if params is not None and len(totals) > INLINE_TENANTS:
            # the allocation's bisection costs ~60 us per active tenant (60 ms for 1,000): a pure function, so it
            # runs in a thread, where the 1 ms GIL switch interval bounds how long the loop waits for it
            rates = {t: n / params.interval for t, n in totals.items() if n > 0}
            demands = demands_of(params, rates, ())
            shares = await asyncio.to_thread(allocate, params.capacity, demands, params.headroom)
        self.recompute(totals, params, self._clock(), shares)

    async def run(self) -> None:
        while True:
            params = self._params()
            interval = params.interval if params else 1.0
            now = self._clock()
            epoch = math.floor(now / interval)
            # wake just after the boundary: counts then belong to the epoch that just ended, on every replica
            await asyncio.sleep((epoch + 1) * interval - now + 0.02 * interval)
            params = self._params()
            if (params.interval if params else 1.0) != interval:
                # the interval changed while asleep (the first policy load, or a reload): the boundary just
                # reached is not one of the new interval's, where every replica publishes; the counts carry on
                continue
            try:
                await self.tick(epoch, params)
            except Exception:
                log.exception("fair share recomputation failed")


def demands_of(params: FairParams, rates: Mapping[str, float], newcomers: Iterable[str]) -> dict[str, TenantDemand]:
    """The allocator's input: measured rates, and newcomers (not measured yet) wanting the whole capacity."""
    demands = {t: params.demand(t, r) for t, r in rates.items()}
    for t in newcomers:
        if t not in demands:
            demands[t] = params.demand(t, params.capacity)
    return demands


def per_interval(
    counts: Mapping[str, float], arrived: Mapping[str, float], since: float, now: float, interval: float
) -> dict[str, float]:
    """`counts`, taken over [since, now], as counts per `interval`.

    Demand is a count per interval, but a count covers the time it was taken over: a tenant that arrived part-way
    (at `arrived[t]`) was counted only since then, and the first window after start-up, or after the interval
    changed, is not one interval long. Taken for a whole interval, both made a tenant under its share look smaller
    than it is, and it was then refused until the next recomputation: a small tenant first counted over 0.4 of an
    interval was allotted 1.9 of its 4 req/s, and one counted over the 0.17 s between start-up and the first
    one-second boundary (the policy not loaded yet) 2.4 of its 6.7 (tests/e2e/test_fairness_gateway.py). A span is
    taken as at least MIN_SPAN of an interval: a handful of requests in a moment says little about a rate. Each
    replica scales its own count by its own span, so the totals the replicas exchange add up the replicas' rates
    (a tenant a replica saw only briefly still counts there: tests/integration/test_ratelimit_fairness.py)."""
    out: dict[str, float] = {}
    for tenant, n in counts.items():
        at = arrived.get(tenant)
        span = now - (since if at is None else max(since, at))
        out[tenant] = n * interval / max(span, MIN_SPAN * interval)
    return out
