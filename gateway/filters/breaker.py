"""Stage 5: the upstream's circuit breaker.

PASS-THROUGH until the resilience issue (#6) lands: every circuit is closed.
"""

from __future__ import annotations

from aiohttp import web

from gateway.context import RequestContext
from gateway.policy.snapshot import Snapshot


class BreakerFilter:
    stage = "breaker"

    async def __call__(self, ctx: RequestContext) -> None:
        return None


def build(snapshot: Snapshot, app: web.Application) -> BreakerFilter:
    return BreakerFilter()
