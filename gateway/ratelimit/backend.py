"""Which store decides: Redis while it answers, the in-process store while it does not.

On the first Redis error the replica switches to its in-process fallback at once (the failing request is decided
there, so the client never sees the outage), logs it and sets `mcp_gateway_ratelimit_fallback_active`. While in
fallback no request touches Redis; a background probe pings it every `probe_interval_seconds` and switches back as
soon as it answers. `fail_mode` chooses what the fallback is: `fallback` (in process, each replica taking
`fallback_share` of the global and tenant rates), `open` (admit everything) or `closed` (refuse with 503).

A switch admits no more than the limits allow: the fallback's buckets start empty at the switch (admitting at the
rate, no burst), and on the way back the fallback's buckets that are not full are carried over to Redis (seal.lua,
keeping a later state Redis holds), since Redis's own state is from before the outage. Both err toward refusing for
one burst window rather than admitting a burst twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.errors import ServiceUnavailable
from gateway.net.redis_mux import BUSY
from gateway.ratelimit.gcra import SlotCheck, SlotHold, TierCheck, Verdict
from gateway.ratelimit.metrics import RateLimitMetrics
from gateway.ratelimit.redis_store import RedisLimiterStore
from gateway.ratelimit.store import MemoryStore

log = structlog.get_logger("gateway.ratelimit")

STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
# what redis-py's BlockingConnectionPool raises when no connection frees up within its timeout, and the hot-path
# connection when too many commands are in flight
POOL_EXHAUSTED = BUSY
SEAL_TIMEOUT_SECONDS = 5.0


def _scaled(tiers: Sequence[TierCheck], share: float) -> list[TierCheck]:
    if share >= 1.0:
        return list(tiers)
    return [
        dataclasses.replace(t, interval=t.interval / share, burst=max(1.0, t.burst * share)) if t.shared else t
        for t in tiers
    ]


class LimiterBackend:
    def __init__(
        self,
        redis: RedisLimiterStore | None,
        metrics: RateLimitMetrics,
        memory: MemoryStore | None = None,
    ) -> None:
        self.redis = redis
        self.memory = memory or MemoryStore()
        self.metrics = metrics
        self.degraded = False
        self.probe_interval = 0.25
        self._held: dict[str, SlotHold] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def using_redis(self) -> bool:
        return self.redis is not None and not self.degraded

    async def decide(
        self,
        tiers: Sequence[TierCheck],
        slots: Sequence[SlotCheck],
        slot_ttl: float,
        fail_mode: str = "fallback",
        fallback_share: float = 1.0,
    ) -> Verdict:
        if self.redis is not None and not self.degraded:
            try:
                verdict = await self.redis.decide(tiers, slots, slot_ttl)
            except RedisConnectionError as exc:
                if str(exc) == POOL_EXHAUSTED:
                    # Redis answers, but every pooled connection is busy: decide this one request in process
                    # rather than declaring Redis down for the whole replica
                    self.metrics.store_errors.labels("pool_exhausted").inc()
                    return self._local(tiers, slots, slot_ttl, fail_mode, fallback_share)
                self._degrade("decide", exc)
            except STORE_ERRORS as exc:
                self._degrade("decide", exc)
            else:
                if verdict.hold is not None:
                    self._hold(verdict.hold)
                return verdict
        return self._local(tiers, slots, slot_ttl, fail_mode, fallback_share)

    def _local(
        self,
        tiers: Sequence[TierCheck],
        slots: Sequence[SlotCheck],
        slot_ttl: float,
        fail_mode: str,
        fallback_share: float,
    ) -> Verdict:
        if self.redis is None:
            verdict = self.memory.decide_now(tiers, slots, slot_ttl)
        elif fail_mode == "open":
            return Verdict(True, backend="open")
        elif fail_mode == "closed":
            raise ServiceUnavailable(
                "rate limiter unavailable", reason="limiter_unavailable", retry_after=max(1.0, self.probe_interval)
            )
        else:
            verdict = self.memory.decide_now(_scaled(tiers, fallback_share), slots, slot_ttl)
            verdict.backend = "fallback"
        if verdict.hold is not None:
            self._hold(verdict.hold)
        return verdict

    def _hold(self, hold: SlotHold) -> None:
        self._held[hold.member] = hold
        self.metrics.slots_held.set(len(self._held))

    def release(self, hold: SlotHold) -> None:
        """Synchronous (runs in the chain's `finally`): memory slots go at once, Redis slots in a task."""
        self._held.pop(hold.member, None)
        self.metrics.slots_held.set(len(self._held))
        if hold.store != "redis":
            self.memory.release_now(hold)
            return
        if self.redis is None or self.degraded:
            return  # the slot expires by its TTL; nothing to do without Redis
        task = asyncio.get_running_loop().create_task(self._release_redis(hold))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release_redis(self, hold: SlotHold) -> None:
        assert self.redis is not None
        try:
            await self.redis.release(hold)
        except STORE_ERRORS:
            self.metrics.store_errors.labels("release").inc()  # the slot expires by its TTL instead

    @property
    def held(self) -> int:
        return len(self._held)

    def _degrade(self, operation: str, exc: BaseException) -> None:
        self.metrics.store_errors.labels(operation).inc()
        if self.degraded:
            return
        self.degraded = True
        self.memory.begin_fallback()
        self.metrics.backend_fallback.set(1)
        self.metrics.fallbacks.labels("to_fallback").inc()
        log.warning("redis unreachable; rate limits now decided in process", error=f"{type(exc).__name__}: {exc}")

    async def probe_once(self) -> bool:
        """One probe while degraded: True when Redis answered and the replica switched back."""
        if self.redis is None or not self.degraded:
            return False
        try:
            async with asyncio.timeout(max(0.5, self.probe_interval)):
                await self.redis.ping()
            # Redis's buckets are from before the outage (or gone): the buckets the fallback emptied are carried
            # over, so switching back admits no second burst on top of the fallback's. Its own timeout: a large
            # state must not make every probe fail and keep the replica in fallback
            async with asyncio.timeout(SEAL_TIMEOUT_SECONDS):
                await self.redis.seal(self.memory.fallback_state())
        except STORE_ERRORS:
            return False
        self.memory.end_fallback()
        self.degraded = False
        self.metrics.backend_fallback.set(0)
        self.metrics.fallbacks.labels("to_redis").inc()
        log.info("redis reachable again; rate limits decided in redis")
        return True

    async def probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            await self.probe_once()

    async def refresh_loop(self, slot_ttl: float) -> None:
        """Keep held slots alive (every third of the TTL) so only a dead replica's slots expire."""
        while True:
            await asyncio.sleep(max(0.5, slot_ttl / 3))
            await self.refresh_once(slot_ttl)

    async def refresh_once(self, slot_ttl: float) -> None:
        holds = list(self._held.values())
        self.metrics.slots_held.set(len(holds))
        if not holds:
            return
        self.memory.refresh([h for h in holds if h.store != "redis"], slot_ttl)
        remote = [h for h in holds if h.store == "redis"]
        if remote and self.redis is not None and not self.degraded:
            try:
                await self.redis.refresh(remote, slot_ttl)
            except STORE_ERRORS as exc:
                self._degrade("refresh", exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
