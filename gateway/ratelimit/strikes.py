"""The chain observer that turns refusals into DDoS strikes (floods, credential guessing)."""

from __future__ import annotations

from gateway.context import RequestContext
from gateway.ratelimit.service import RateLimiter

# stages whose refusals say "this client is misbehaving"; authz refusals are ordinary mistakes, not attacks
STRIKE_STAGES = frozenset({"client_guard", "authn", "ratelimit"})


class StrikeObserver:
    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    def observe(self, ctx: RequestContext) -> None:
        if ctx.refused_stage not in STRIKE_STAGES or ctx.refused_reason == "ip_blocked":
            return
        if ctx.http_status == 499:  # the client went away; not a refusal
            return
        compiled = self._limiter.compiled(ctx.snapshot)
        if compiled.ddos.enabled:
            self._limiter.blocker.strike(ctx.client_ip, compiled.ddos)
