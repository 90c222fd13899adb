"""Wiring of the limiter into the app: the `LIMITER` AppKey, its metrics, the strike observer and the background
tasks (Redis probe, slot refresh, fair shares, block list sync), started and stopped with the app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.policy.snapshot import Snapshot
    from gateway.ratelimit.service import RateLimiter

LIMITER: web.AppKey[RateLimiter] = web.AppKey("ratelimiter")


def install(app: web.Application, settings: Settings) -> None:
    from gateway.metrics import METRICS
    from gateway.observers import add_observer
    from gateway.policy.store import POLICY
    from gateway.ratelimit.metrics import RateLimitMetrics
    from gateway.ratelimit.service import RateLimiter
    from gateway.ratelimit.strikes import StrikeObserver
    from gateway.redis_client import REDIS

    def active_snapshot() -> Snapshot | None:
        store = app.get(POLICY)
        if store is None:
            return None
        try:
            return store.active.snapshot
        except AssertionError:  # not loaded yet
            return None

    holder = app[REDIS]
    limiter = RateLimiter(RateLimitMetrics(app[METRICS].registry), holder.client, holder.prefix, active_snapshot)
    app[LIMITER] = limiter
    add_observer(app, StrikeObserver(limiter))

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        limiter.start()
        yield
        await limiter.stop()

    app.cleanup_ctx.append(lifecycle)
