"""Stage 4: multi-tier rate limits.

PASS-THROUGH until the rate-limit issue (#5) lands: it charges nothing and refuses nothing.
"""

from __future__ import annotations

from aiohttp import web

from gateway.context import RequestContext
from gateway.policy.snapshot import Snapshot


class RateLimitFilter:
    stage = "ratelimit"

    async def __call__(self, ctx: RequestContext) -> None:
        return None


def build(snapshot: Snapshot, app: web.Application) -> RateLimitFilter:
    return RateLimitFilter()
