"""Stage 1: IP block list and per-IP flood limit, before any parsing.

Both read only process memory: the block list is a local cache of the shared one (synced in the background), and
the per-IP tier is decided by this replica's in-process GCRA store. A flood therefore costs a dict lookup, never a
Redis round trip. Allowlisted networks (`ddos.allowlist`) are exempt from both.
"""

from __future__ import annotations

from gateway.context import RequestContext, ShadowDecision
from gateway.errors import IpBlocked, RateLimited
from gateway.policy.snapshot import Snapshot
from gateway.ratelimit.compiled import CompiledLimits
from gateway.ratelimit.headers import limit_headers
from gateway.ratelimit.service import RateLimiter


class ClientGuard:
    stage = "client_guard"

    def __init__(self, compiled: CompiledLimits, limiter: RateLimiter) -> None:
        self._c = compiled
        self._limiter = limiter
        self._blocker = limiter.blocker
        self._ddos = compiled.ddos.enabled
        self._params = compiled.ddos
        self._rate = compiled.ip
        self._store = limiter.ip_store

    async def __call__(self, ctx: RequestContext) -> None:
        ip = ctx.client_ip
        blocker = self._blocker
        if self._ddos:
            left = blocker.blocked_for(ip)
            if left > 0 and not blocker.allowlisted(ip, self._params):
                self._limiter.metrics.ip_blocked_requests.inc()
                raise IpBlocked("client IP is temporarily blocked", retry_after=left, data={"limit": "ip_block"})
        rate = self._rate
        if rate is None or blocker.allowlisted(ip, self._params):
            return
        # the store's single-tier path: nothing is allocated for an admitted request (the common case by far)
        result = self._store.refusal_one("ip", ip, rate.interval, rate.burst, 1, rate.shadow)
        if result is None:
            return
        if result.shadow:
            self._limiter.metrics.refused("ip", True)
            ctx.shadow.append(ShadowDecision(self.stage, "rate_limited:ip"))
            return
        self._limiter.metrics.refused("ip", False)
        ctx.notes["limit"] = "ip"
        raise RateLimited(
            "too many requests from this IP",
            retry_after=result.retry_after,
            headers=limit_headers([result], result),
            data={"limit": "ip"},
        )


def build(snapshot: Snapshot, limiter: RateLimiter) -> ClientGuard:
    return ClientGuard(limiter.compiled(snapshot), limiter)
