"""Resilience metrics: breaker states and transitions, upstream health, retries, pools and stream budgets,
outstanding requests.

Labels are bounded by policy: `server` is a configured server name and `upstream` a configured instance URL, shown
through `display_url` (never its userinfo or query: /metrics needs no credential).
States, health and pool figures are read at scrape time by a collector, so the request path pays nothing for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.redact import display_url
from gateway.resilience.registry import BreakerRegistry
from gateway.resilience.state import STATE_VALUE, Transition
from gateway.upstream.balancer import Balancer
from gateway.upstream.health import HealthMonitor, InstanceHealth
from gateway.upstream.pool import UpstreamPools

HEALTH_VALUE = {"unhealthy": 0, "healthy": 1, "unknown": -1}


class ResilienceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.transitions = Counter(
            "mcp_gateway_breaker_transitions_total",
            "Breaker state changes per upstream instance, by new state and reason",
            ["server", "upstream", "state", "reason"],
            registry=registry,
        )
        self.health_checks = Counter(
            "mcp_gateway_upstream_health_checks_total",
            "Active health checks per upstream instance, by result (ok / failed)",
            ["server", "upstream", "result"],
            registry=registry,
        )
        self.health_latency = Histogram(
            "mcp_gateway_upstream_health_check_duration_seconds",
            "Duration of active health checks",
            ["server"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.retries = Counter(
            "mcp_gateway_upstream_retries_total",
            "Requests sent again to an upstream, by reason (not_delivered / read_only)",
            ["server", "reason"],
            registry=registry,
        )
        self.budget_exhausted_total = Counter(
            "mcp_gateway_upstream_retry_budget_exhausted_total",
            "Retries not made because the server's retry budget was spent",
            ["server"],
            registry=registry,
        )

        self.stream_refusals = Counter(
            "mcp_gateway_upstream_stream_refusals_total",
            "Streams refused because the upstream's stream budget was full and the tenant held its fair share",
            ["upstream", "reason"],
            registry=registry,
        )
        self.stream_evictions = Counter(
            "mcp_gateway_upstream_stream_evictions_total",
            "Streams ended to give their slot to a tenant under its fair share of the upstream's stream budget",
            ["upstream"],
            registry=registry,
        )

    def stream_refused(self, origin: str) -> None:
        self.stream_refusals.labels(origin, "stream_share_exceeded").inc()

    def stream_evicted(self, origin: str) -> None:
        self.stream_evictions.labels(origin).inc()

    def transition(self, server: str, url: str, tr: Transition) -> None:
        self.transitions.labels(server, display_url(url), tr.new.value, tr.reason).inc()

    def checked(self, st: InstanceHealth, ok: bool, latency: float) -> None:
        self.health_checks.labels(st.server, display_url(st.url), "ok" if ok else "failed").inc()
        self.health_latency.labels(st.server).observe(latency)

    def retried(self, server: str, reason: str) -> None:
        self.retries.labels(server, reason).inc()

    def budget_exhausted(self, server: str) -> None:
        self.budget_exhausted_total.labels(server).inc()


class ResilienceCollector(Collector):
    """Gauges computed at scrape time from the live breaker, health, balancer and pool state."""

    def __init__(
        self,
        breakers: BreakerRegistry,
        health: HealthMonitor,
        balancer: Balancer,
        pools: UpstreamPools,
        shared_available: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._breakers = breakers
        self._health = health
        self._balancer = balancer
        self._pools = pools
        self._shared = shared_available
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "mcp_gateway_breaker_state",
            "Breaker state per upstream instance: 0 closed, 1 half-open, 2 open",
            labels=["server", "upstream"],
        )
        outstanding = GaugeMetricFamily(
            "mcp_gateway_upstream_outstanding_requests",
            "Requests in flight per upstream instance (what least-outstanding balancing compares)",
            labels=["server", "upstream"],
        )
        for server, url, br in self._breakers.items():
            shown = display_url(url)
            state.add_metric([server, shown], STATE_VALUE[br.state])
            outstanding.add_metric([server, shown], self._balancer.outstanding(server, url))
        yield state
        yield outstanding
        healthy = GaugeMetricFamily(
            "mcp_gateway_upstream_healthy",
            "Active health check verdict per upstream instance: 1 healthy, 0 unhealthy, -1 not yet known",
            labels=["server", "upstream"],
        )
        for st in self._health.states():
            healthy.add_metric([st.server, display_url(st.url)], HEALTH_VALUE[st.status])
        yield healthy
        pool = GaugeMetricFamily(
            "mcp_gateway_upstream_pool_connections",
            "Upstream connection pool per origin: in_use, idle, waiting (requests queued for a connection), limit",
            labels=["upstream", "state"],
        )
        for origin, stats in self._pools.stats().items():
            for name in ("in_use", "idle", "waiting", "limit"):
                pool.add_metric([origin, name], stats.get(name, 0))
        yield pool
        streams = GaugeMetricFamily(
            "mcp_gateway_upstream_streams",
            "Long-lived streams per upstream origin, in their own pool: open, limit (pool.max_streams)",
            labels=["upstream", "state"],
        )
        stream_tenants = GaugeMetricFamily(
            "mcp_gateway_upstream_stream_tenants",
            "Tenants holding streams per upstream origin (the stream budget is shared among them when full)",
            labels=["upstream"],
        )
        for origin, stats in self._pools.stream_stats().items():
            streams.add_metric([origin, "open"], stats["open"])
            streams.add_metric([origin, "limit"], stats["limit"])
            stream_tenants.add_metric([origin], stats["tenants"])
        yield streams
        yield stream_tenants
        shared = GaugeMetricFamily(
            "mcp_gateway_breaker_shared_state_available",
            "1 when breaker state is shared through Redis right now, 0 when breakers decide locally",
        )
        shared.add_metric([], self._shared())
        yield shared

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
