"""`GET /admin/servers` (admin scope): servers' instances with health, breaker state, last error, latency.

An operator sees every server with its upstream URLs. A tenant admin sees only the servers its tenant may reach,
and of each instance only its position, weight and state: no upstream URL, and no health-check error text (which
quotes the upstream's address).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import orjson
from aiohttp import web

from gateway.admin.audited import AdminGate
from gateway.admin.model import is_operator
from gateway.admin.paging import paginate, parse_page, rfc3339
from gateway.auth.principal import Principal
from gateway.policy.snapshot import Snapshot
from gateway.policy.store import PolicyStore
from gateway.redact import display_url
from gateway.resilience.registry import BreakerRegistry
from gateway.upstream.balancer import Balancer
from gateway.upstream.health import HealthMonitor


class ServerStatus:
    """What `/admin/servers` reads: the active policy's servers, their breakers, health and balancer load."""

    __slots__ = ("balancer", "breakers", "health", "policy")

    def __init__(
        self, policy: PolicyStore, breakers: BreakerRegistry, health: HealthMonitor, balancer: Balancer
    ) -> None:
        self.policy = policy
        self.breakers = breakers
        self.health = health
        self.balancer = balancer


def servers_view(status: ServerStatus, only: Collection[str] | None = None) -> dict[str, Any]:
    """The view of every server, or of the servers named in `only`."""
    snapshot = status.policy.active.snapshot
    registry = status.breakers
    health = status.health
    balancer = status.balancer
    now = registry.clock()
    shared = registry.shared
    servers: dict[str, Any] = {}
    for name, server in sorted(snapshot.servers.items()):
        if only is not None and name not in only:
            continue
        instances = []
        for up in server.upstreams:
            br = registry.peek(name, up.url)
            st = health.state(name, up.url)
            hview: dict[str, Any] = (
                st.view() if st is not None else {"status": "unknown" if server.health.enabled else "disabled"}
            )
            if "last_checked" in hview:
                hview["last_checked"] = rfc3339(hview["last_checked"])
            breaker: dict[str, Any] = (
                br.snapshot(now) if br is not None and server.breaker.enabled else {"state": "disabled"}
            )
            if "last_error_at" in breaker:
                breaker["last_error_at"] = rfc3339(breaker["last_error_at"])
            instances.append(
                {
                    "url": display_url(up.url),
                    "weight": up.weight,
                    "health": hview,
                    "breaker": breaker,
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
        "generated_at": rfc3339(time.time()),
        "servers": servers,
    }


def reachable_servers(snapshot: Snapshot, tenant: str) -> frozenset[str]:
    """The servers `tenant` may call: those it owns (`owner`, `tenants.<t>.servers`) or that are shared with it
    (`shared_with`, `"*"` for every tenant); the same rule as the authz stage's reach check."""
    owned = snapshot.tenants[tenant].servers if tenant in snapshot.tenants else []
    return frozenset(
        name
        for name, server in snapshot.servers.items()
        if name in owned or server.owner == tenant or tenant in server.shared_with or "*" in server.shared_with
    )


def tenant_view(status: ServerStatus, tenant: str) -> dict[str, Any]:
    view = servers_view(status, reachable_servers(status.policy.active.snapshot, tenant))
    for server in view["servers"].values():
        for i, inst in enumerate(server["instances"]):
            del inst["url"]
            inst["instance"] = i
            health = inst["health"]
            if health.get("last_error") is not None:
                health["last_error"] = "check failed"
    view["tenant"] = tenant
    return view


def add_routes(app: web.Application, gate: AdminGate, status: ServerStatus) -> None:
    async def servers(request: web.Request, principal: Principal) -> web.Response:
        page = parse_page(request.query, 1)
        if is_operator(principal):
            view = servers_view(status)
        else:
            assert principal.tenant is not None  # require_admin: admin keys always have a tenant
            view = tenant_view(status, principal.tenant)
        # a page of servers by name; the answer stays an object keyed by server name
        shown, view["next_cursor"] = paginate(list(view["servers"].items()), lambda item: (item[0],), page)
        view["servers"] = dict(shown)
        body = orjson.dumps(view)
        return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "no-store"})

    app.router.add_get("/admin/servers", gate.route("admin/servers.list", servers))
