"""Liveness and readiness. /readyz asks every registered backend check (Redis, PostgreSQL, ...).

A backend the gateway degrades gracefully without (Redis: in-process limiter and sessions; PostgreSQL: audit spool)
is registered with `required=False`: its failure makes the answer `degraded` but still 200, because taking every
replica out of the load balancer when a shared backend blips would turn a degradation into an outage. Only a
required check (or a policy that never loaded) makes /readyz answer 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from gateway.policy.store import PolicyStore
from gateway.version import VERSION

ReadinessCheck = Callable[[], Awaitable[str | None]]  # None = ready, else the reason it is not
Handler = Callable[[web.Request], Awaitable[web.Response]]


# the answer never changes within a process: built once
_HEALTHZ = orjson.dumps({"status": "ok", "version": VERSION})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=_HEALTHZ, content_type="application/json")


def readyz(checks: dict[str, tuple[ReadinessCheck, bool]], policy: PolicyStore) -> Handler:
    """The /readyz handler over the backend checks (name -> (check, required)) and the policy store."""

    async def handle(request: web.Request) -> web.Response:
        return await _readiness(checks, policy)

    return handle


async def _readiness(checks: dict[str, tuple[ReadinessCheck, bool]], policy: PolicyStore) -> web.Response:
    results: dict[str, str] = {}

    async def one(name: str, check: ReadinessCheck) -> None:
        try:
            async with asyncio.timeout(2):
                problem = await check()
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        results[name] = "ok" if problem is None else problem

    await asyncio.gather(*(one(n, c) for n, (c, _) in checks.items()))
    snapshot = policy.current_snapshot()
    version = snapshot.version if snapshot is not None else None
    if snapshot is None:
        results["policy"] = "not loaded"
    required = {n for n, (_, req) in checks.items() if req} | {"policy"}
    ready = all(v == "ok" for n, v in results.items() if n in required)
    degraded = any(v != "ok" for v in results.values())
    status = "not_ready" if not ready else "degraded" if degraded else "ready"
    body = {"status": status, "checks": results, "policy_version": version}
    return web.Response(status=200 if ready else 503, body=orjson.dumps(body), content_type="application/json")
