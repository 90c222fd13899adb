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

ReadinessCheck = Callable[[], Awaitable[str | None]]  # None = ready, else the reason it is not
READINESS: web.AppKey[dict[str, tuple[ReadinessCheck, bool]]] = web.AppKey("readiness_checks", dict)


def add_readiness_check(app: web.Application, name: str, check: ReadinessCheck, *, required: bool = True) -> None:
    if READINESS not in app:
        app[READINESS] = {}
    app[READINESS][name] = (check, required)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    from gateway.policy.store import POLICY

    checks = request.app.get(READINESS, {})
    results: dict[str, str] = {}

    async def one(name: str, check: ReadinessCheck) -> None:
        try:
            async with asyncio.timeout(2):
                problem = await check()
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        results[name] = "ok" if problem is None else problem

    await asyncio.gather(*(one(n, c) for n, (c, _) in checks.items()))
    try:
        version: str | None = request.app[POLICY].active.snapshot.version
    except AssertionError:
        version = None
        results["policy"] = "not loaded"
    required = {n for n, (_, req) in checks.items() if req} | {"policy"}
    ready = all(v == "ok" for n, v in results.items() if n in required)
    degraded = any(v != "ok" for v in results.values())
    status = "not_ready" if not ready else "degraded" if degraded else "ready"
    body = {"status": status, "checks": results, "policy_version": version}
    return web.Response(status=200 if ready else 503, body=orjson.dumps(body), content_type="application/json")
