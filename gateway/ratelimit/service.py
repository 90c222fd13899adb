"""The limiter of one gateway process: store (Redis or in process, with failover), fair shares, IP blocker, and
the background tasks that keep them current. One per gateway, built by `build_limiter` (factory.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import redis.asyncio as aioredis

from gateway.loophold import background
from gateway.policy.snapshot import Snapshot
from gateway.ratelimit.backend import LimiterBackend
from gateway.ratelimit.compiled import CompiledLimits, compile_limits
from gateway.ratelimit.ipblock import IpBlocker
from gateway.ratelimit.metrics import RateLimitMetrics
from gateway.ratelimit.redis_store import RedisLimiterStore
from gateway.ratelimit.shares import FairParams, FairShares, RedisDemandExchange
from gateway.ratelimit.store import MemoryStore

_KEEP_COMPILED = 4


class RateLimiter:
    def __init__(
        self,
        metrics: RateLimitMetrics,
        client: aioredis.Redis | None,
        prefix: str,
        active_snapshot: Callable[[], Snapshot | None],
    ) -> None:
        self.metrics = metrics
        self._active_snapshot = active_snapshot
        self.backend = LimiterBackend(RedisLimiterStore(client, prefix) if client is not None else None, metrics)
        self.fair = FairShares(
            self.fair_params,
            metrics,
            RedisDemandExchange(client, prefix) if client is not None else None,
            use_exchange=lambda: self.backend.using_redis,
        )
        self.blocker = IpBlocker(metrics, client, prefix)
        # the per-IP flood guard is always in process: a flood must not turn into Redis load
        self.ip_store = MemoryStore()
        self._compiled: dict[str, CompiledLimits] = {}
        self._newest = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    def compiled(self, snapshot: Snapshot) -> CompiledLimits:
        got = self._compiled.get(snapshot.version)
        if got is None:
            got = compile_limits(snapshot)
            if len(self._compiled) >= _KEEP_COMPILED:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[snapshot.version] = got
            if snapshot.loaded_at >= self._newest:
                # runtime knobs follow the newest policy only (an old snapshot may be recompiled for a late request)
                self._newest = snapshot.loaded_at
                self.backend.probe_interval = got.probe_interval
                self.blocker.policy_changed()
        return got

    def current(self) -> CompiledLimits | None:
        snap = self._active_snapshot()
        return self.compiled(snap) if snap is not None else None

    def fair_params(self) -> FairParams | None:
        cur = self.current()
        return cur.fair if cur is not None else None

    def _slot_ttl(self) -> float:
        cur = self.current()
        return cur.slot_ttl if cur is not None else 300.0

    async def _refresh_loop(self) -> None:
        while True:
            ttl = self._slot_ttl()
            await asyncio.sleep(max(0.5, ttl / 3))
            await self.backend.refresh_once(self._slot_ttl())

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(background(self.backend.probe_loop(), "ratelimit-probe"), name="ratelimit-probe"),
            loop.create_task(background(self._refresh_loop(), "ratelimit-slot-refresh"), name="ratelimit-slot-refresh"),
            loop.create_task(background(self.fair.run(), "ratelimit-fair-shares"), name="ratelimit-fair-shares"),
            loop.create_task(background(self.blocker.run(), "ratelimit-ip-blocks"), name="ratelimit-ip-blocks"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self.backend.close()
