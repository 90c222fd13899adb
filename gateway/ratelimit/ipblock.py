"""DDoS protection: strikes per client IP, escalating blocks, and a local block cache the client guard reads.

Strikes come from the chain observer (refusals at client_guard, authn or ratelimit: floods and credential
guessing). `strikes` of them within `window_seconds` block the IP for the next entry of `block_seconds` (the last
one repeats); an IP's block count is forgotten after `forget_seconds` without a block. The client guard consults
only the local dict here, so a blocked IP costs no Redis round trip. With Redis, blocks are published to a sorted
set (`rl:blocks`, score = expiry) and every replica pulls it once a second, so a block imposed by one replica is
enforced by all of them within a second.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from gateway.pacing import Slice
from gateway.ratelimit.metrics import RateLimitMetrics

log = structlog.get_logger("gateway.ratelimit.ddos")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_TRACKED = 100_000  # bound on IPs with strikes in memory; the oldest are dropped first


@dataclass(frozen=True, slots=True)
class DdosParams:
    enabled: bool
    strikes: int
    window: float
    blocks: tuple[float, ...]
    forget: float
    allowlist: tuple[IPNetwork, ...]


def parse_allowlist(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


class IpBlocker:
    def __init__(
        self,
        metrics: RateLimitMetrics,
        client: aioredis.Redis | None = None,
        prefix: str = "mgw:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self._client = client
        self._key = f"{prefix}rl:blocks"
        self._clock = clock
        self._blocked: dict[str, float] = {}  # ip -> block expiry (wall clock, shared with other replicas)
        self._strikes: dict[str, deque[float]] = {}
        self._levels: dict[str, tuple[int, float]] = {}  # ip -> (blocks so far, time of the last)
        self._outbox: list[tuple[str, float]] = []
        self._allow_cache: dict[str, bool] = {}

    def blocked_for(self, ip: str) -> float:
        """Seconds this IP stays blocked (0 = not blocked). A dict lookup: the client guard calls it per request."""
        until = self._blocked.get(ip)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._blocked[ip]
            return 0.0
        return left

    def allowlisted(self, ip: str, params: DdosParams) -> bool:
        if not params.allowlist:
            return False  # nothing to match: no parse, and no cache entry per client IP
        hit = self._allow_cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                hit = False
            else:
                hit = any(addr in net for net in params.allowlist)
            if len(self._allow_cache) > MAX_TRACKED:
                self._allow_cache.clear()
            self._allow_cache[ip] = hit
        return hit

    def policy_changed(self) -> None:
        self._allow_cache.clear()

    def strike(self, ip: str, params: DdosParams) -> None:
        """Count one strike; block the IP when it has earned it. Never does I/O (observers must not block)."""
        if not params.enabled or ip in self._blocked or self.allowlisted(ip, params):
            return
        now = self._clock()
        q = self._strikes.get(ip)
        if q is None:
            if len(self._strikes) >= MAX_TRACKED:
                self._strikes.pop(next(iter(self._strikes)))
            q = self._strikes[ip] = deque()
        q.append(now)
        horizon = now - params.window
        while q and q[0] < horizon:
            q.popleft()
        if len(q) < params.strikes:
            return
        del self._strikes[ip]
        count, last = self._levels.get(ip, (0, 0.0))
        if now - last > params.forget:
            count = 0
        seconds = params.blocks[min(count, len(params.blocks) - 1)]
        self._levels[ip] = (count + 1, now)
        if len(self._levels) > MAX_TRACKED:
            self._levels.pop(next(iter(self._levels)))
        self.block(ip, seconds)

    def block(self, ip: str, seconds: float) -> None:
        until = self._clock() + seconds
        self._blocked[ip] = until
        self._outbox.append((ip, until))
        self._metrics.ip_blocks.inc()
        self._metrics.blocked_ips.set(len(self._blocked))
        log.warning("client IP blocked", ip=ip, seconds=seconds)

    @property
    def blocked(self) -> dict[str, float]:
        return dict(self._blocked)

    async def sync_once(self) -> None:
        """Publish this replica's new blocks and adopt everybody's (one pipeline).

        Under a flood the list may hold many thousands of addresses: the walks over it go in time slices."""
        now = self._clock()
        slice_ = Slice()
        for ip, until in list(self._blocked.items()):
            if until <= now and self._blocked.get(ip) == until:
                del self._blocked[ip]
            if slice_.spent():
                await slice_.next()
        if self._client is not None:
            outbox, self._outbox = self._outbox, []
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    if outbox:
                        pipe.zadd(self._key, {ip: until for ip, until in outbox}, gt=True)
                    pipe.zremrangebyscore(self._key, "-inf", now)
                    pipe.zrangebyscore(self._key, now, "+inf", withscores=True)
                    pipe.expire(self._key, 86400)
                    res = await pipe.execute()
            except Exception as exc:
                self._outbox = outbox + self._outbox
                log.debug("block list sync failed", error=type(exc).__name__)
            else:
                for member, until in res[-2]:
                    ip = member.decode() if isinstance(member, bytes) else str(member)
                    if until > self._blocked.get(ip, 0.0):
                        self._blocked[ip] = float(until)
                    if slice_.spent():
                        await slice_.next()
        else:
            self._outbox.clear()
        self._metrics.blocked_ips.set(len(self._blocked))

    async def run(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.sync_once()
