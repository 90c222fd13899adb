"""Prometheus metrics, on a registry owned by the app (no process-global singletons).

Labels are bounded: server names come from policy, MCP methods from a fixed list (anything else is "other"),
statuses are HTTP codes. Never a user id, key id or session id. Label children are cached so the request path does
a dict lookup, not prometheus-client's label resolution.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.auth.scopes import READ_METHODS, WRITE_METHODS
from gateway.context import RequestContext

KNOWN_METHODS = frozenset(READ_METHODS | WRITE_METHODS | {"batch", "notification", "response", "stream", "delete"})
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def method_label(ctx: RequestContext) -> str:
    if ctx.http_method == "GET":
        return "stream"
    if ctx.http_method == "DELETE":
        return "delete"
    envs = ctx.envelopes
    if not envs:
        return "none"
    if len(envs) > 1:
        return "batch"
    env = envs[0]
    if env.method is None:
        return "response"
    if env.method.startswith("notifications/"):
        return "notification"
    return env.method if env.method in KNOWN_METHODS else "other"


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mcp_gateway_requests_total",
            "Requests handled, by server, MCP method and HTTP status",
            ["server", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "mcp_gateway_request_duration_seconds",
            "Gateway time per request, from arrival to the end of the answer (streams included)",
            ["server", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "mcp_gateway_upstream_duration_seconds",
            "Upstream time to the answer's headers",
            ["server"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("mcp_gateway_in_flight_requests", "Requests being handled now", registry=r)
        self.decisions = Counter(
            "mcp_gateway_decisions_total",
            "Chain decisions by stage: refused, or shadow_refused (would refuse, mode: shadow)",
            ["stage", "decision", "reason"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "mcp_gateway_policy_reloads_total", "Policy reloads by result", ["result"], registry=r
        )
        self.policy_reload_failed = Gauge(
            "mcp_gateway_policy_last_reload_failed", "1 if the last policy reload failed", registry=r
        )
        self.policy_info = Gauge(
            "mcp_gateway_policy_snapshot_info",
            "The active policy snapshot (value 1)",
            ["version"],
            registry=r,
        )
        self._req_children: dict[tuple[str, str, str], Any] = {}
        self._lat_children: dict[tuple[str, str], Any] = {}
        self._up_children: dict[str, Any] = {}
        self._policy_version: str | None = None

    def observe(self, ctx: RequestContext) -> None:
        server = ctx.server_name if ctx.server is not None else "_unknown"
        method = method_label(ctx)
        status = str(ctx.http_status or 0)
        key = (server, method, status)
        child = self._req_children.get(key)
        if child is None:
            child = self._req_children[key] = self.requests.labels(server, method, status)
        child.inc()
        lkey = (server, method)
        lat = self._lat_children.get(lkey)
        if lat is None:
            lat = self._lat_children[lkey] = self.latency.labels(server, method)
        lat.observe(ctx.elapsed())
        if ctx.upstream_latency is not None:
            up = self._up_children.get(server)
            if up is None:
                up = self._up_children[server] = self.upstream_latency.labels(server)
            up.observe(ctx.upstream_latency)
        if ctx.refused_stage is not None and ctx.refused_reason is not None and ctx.http_status != 499:
            self.decisions.labels(ctx.refused_stage, "refused", ctx.refused_reason).inc()
        for shadow in ctx.shadow:
            self.decisions.labels(shadow.stage, "shadow_refused", shadow.reason).inc()

    def policy_loaded(self, ok: bool, version: str) -> None:
        self.policy_reloads.labels("ok" if ok else "failed").inc()
        self.policy_reload_failed.set(0 if ok else 1)
        if version != self._policy_version:
            if self._policy_version is not None:
                self.policy_info.remove(self._policy_version)
            self.policy_info.labels(version).set(1)
            self._policy_version = version

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics", GatewayMetrics)


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
