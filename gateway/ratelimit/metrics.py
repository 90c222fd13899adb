"""The limiter's Prometheus metrics, on the app's registry. Labels are bounded: tier names are a fixed set, tenant
labels only for tenants named in policy (anything else is `_other`), never key ids, users or IPs."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

TIERS = ("ip", "global", "tenant", "user", "key")


class RateLimitMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.decisions = Counter(
            "mcp_gateway_ratelimit_decisions_total",
            "Charged requests by result (allowed, refused) and deciding backend (redis, memory, fallback, open)",
            ["result", "backend"],
            registry=r,
        )
        self.refusals = Counter(
            "mcp_gateway_ratelimit_refusals_total",
            "Refusals by the tier that refused; mode=shadow counts would-be refusals of shadow tiers",
            ["tier", "mode"],
            registry=r,
        )
        self.backend_fallback = Gauge(
            "mcp_gateway_ratelimit_fallback_active",
            "1 while this replica decides limits in process because Redis is unreachable",
            registry=r,
        )
        self.fallbacks = Counter(
            "mcp_gateway_ratelimit_fallback_transitions_total",
            "Switches between the Redis store and the in-process fallback, by direction",
            ["direction"],
            registry=r,
        )
        self.store_errors = Counter(
            "mcp_gateway_ratelimit_store_errors_total",
            "Redis errors seen by the limiter, by operation",
            ["operation"],
            registry=r,
        )
        self.fair_share = Gauge(
            "mcp_gateway_ratelimit_fair_share_rps",
            "Each active tenant's current share of the global rate (cost units per second)",
            ["tenant"],
            registry=r,
        )
        self.tenant_demand = Gauge(
            "mcp_gateway_ratelimit_tenant_demand_rps",
            "Each tenant's offered load, all replicas, refused requests included (cost units per second)",
            ["tenant"],
            registry=r,
        )
        self.ip_blocks = Counter(
            "mcp_gateway_ratelimit_ip_blocks_total", "IP blocks imposed by this replica", registry=r
        )
        self.ip_blocked_requests = Counter(
            "mcp_gateway_ratelimit_ip_blocked_requests_total",
            "Requests refused because their IP is blocked",
            registry=r,
        )
        self.blocked_ips = Gauge(
            "mcp_gateway_ratelimit_blocked_ips", "IPs blocked now (this replica's cache)", registry=r
        )
        self.slots_held = Gauge(
            "mcp_gateway_ratelimit_slots_held",
            "Concurrency slots (in-flight tools/call, open streams) held by this replica",
            registry=r,
        )
        self._decision_children: dict[tuple[str, str], Any] = {}
        self._refusal_children: dict[tuple[str, str], Any] = {}

    def decision_child(self, allowed: bool, backend: str) -> Any:
        """The labelled `decisions` counter itself, for a caller that counts the same outcome on every request."""
        key = ("allowed" if allowed else "refused", backend)
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self.decisions.labels(*key)
        return child

    def decided(self, allowed: bool, backend: str) -> None:
        key = ("allowed" if allowed else "refused", backend)
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self.decisions.labels(*key)
        child.inc()

    def refused(self, tier: str, shadow: bool) -> None:
        key = (tier, "shadow" if shadow else "enforce")
        child = self._refusal_children.get(key)
        if child is None:
            child = self._refusal_children[key] = self.refusals.labels(*key)
        child.inc()
