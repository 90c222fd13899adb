"""Stage 1: IP block list and per-IP flood limit.

PASS-THROUGH until the rate-limit issue (#5) lands: it admits every client.
"""

from __future__ import annotations

from aiohttp import web

from gateway.context import RequestContext
from gateway.policy.snapshot import Snapshot


class ClientGuard:
    stage = "client_guard"

    async def __call__(self, ctx: RequestContext) -> None:
        return None


def build(snapshot: Snapshot, app: web.Application) -> ClientGuard:
    return ClientGuard()
