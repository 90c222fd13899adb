"""Factory of the limiter: the limiter with its metrics and store, and its lifecycle (the background tasks: Redis
probe, slot refresh, fair shares, block list sync). The strike observer and the filters are wired by
gateway/compose.py."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry

from gateway.lifecycle import Lifecycle
from gateway.policy.snapshot import Snapshot
from gateway.ratelimit.metrics import RateLimitMetrics
from gateway.ratelimit.service import RateLimiter
from gateway.redis_client import RedisHolder


def build_limiter(
    registry: CollectorRegistry, redis: RedisHolder, active_snapshot: Callable[[], Snapshot | None]
) -> tuple[RateLimiter, Lifecycle]:
    """`active_snapshot` is None until the policy is loaded (the background tasks start before it)."""
    limiter = RateLimiter(RateLimitMetrics(registry), redis.client, redis.prefix, active_snapshot)

    async def start() -> None:
        limiter.start()

    return limiter, Lifecycle("ratelimit", start, limiter.stop)
