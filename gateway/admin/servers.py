"""`GET /admin/servers` (admin scope): every server's instances with health, breaker state, last error, latency."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from gateway.admin.audited import audited_admin
from gateway.auth.principal import Principal
from gateway.breaker.registry import BREAKERS
from gateway.policy.store import POLICY
from gateway.upstream.balancer import BALANCER
from gateway.upstream.health import HEALTH


def servers_view(app: web.Application) -> dict[str, Any]:
    snapshot = app[POLICY].active.snapshot
    registry = app[BREAKERS]
    health = app[HEALTH]
    balancer = app[BALANCER]
    now = registry.clock()
    shared = registry.shared
    servers: dict[str, Any] = {}
    for name, server in sorted(snapshot.servers.items()):
        instances = []
        for up in server.upstreams:
            br = registry.peek(name, up.url)
            st = health.state(name, up.url)
            hview = st.view() if st is not None else {"status": "unknown" if server.health.enabled else "disabled"}
            instances.append(
                {
                    "url": up.url,
                    "weight": up.weight,
                    "health": hview,
                    "breaker": br.snapshot(now) if br is not None and server.breaker.enabled else {"state": "disabled"},
                    "outstanding": balancer.outstanding(name, up.url),
                }
            )
        servers[name] = {
            "transport": server.transport,
            "load_balancing": server.load_balancing,
            "breaker_mode": server.breaker.mode if server.breaker.enabled else "disabled",
            "health_kind": server.health.kind if server.health.enabled else "disabled",
            "instances": instances,
        }
    return {
        "policy_version": snapshot.version,
        "breaker_state_shared": shared is not None and shared.available,
        "generated_at": time.time(),
        "servers": servers,
    }


async def _servers(request: web.Request, principal: Principal) -> web.Response:
    body = orjson.dumps(servers_view(request.app))
    return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "no-store"})


servers_handler = audited_admin("admin/servers.list", _servers)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/servers", servers_handler)
