"""Wiring of resilience into the app: breakers (+ Redis sharing), health checks, balancer, retries, metrics, admin.

Runtime state lives under AppKeys (BREAKERS, HEALTH, BALANCER), outside any policy snapshot, so a reload keeps
breaker states and health verdicts. The breaker filter's `build()` hands each new snapshot to the registry and the
health monitor, which is how checks follow reloads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.admin.servers import add_routes
from gateway.breaker.metrics import ResilienceCollector, ResilienceMetrics
from gateway.breaker.registry import BREAKERS, BreakerRegistry
from gateway.breaker.shared import RedisBreakerStore
from gateway.breaker.state import State
from gateway.metrics import METRICS
from gateway.policy.store import POLICY
from gateway.redis_client import REDIS
from gateway.runtime import RUNTIME
from gateway.settings import Settings
from gateway.upstream.balancer import BALANCER, Balancer
from gateway.upstream.health import HEALTH, HealthMonitor, InstanceHealth, Status
from gateway.upstream.pool import POOLS
from gateway.upstream.resilient import ResilientForwarder


def install(app: web.Application, settings: Settings) -> None:
    metrics = ResilienceMetrics(app[METRICS].registry)
    registry = BreakerRegistry(on_transition=metrics.transition)
    app[BREAKERS] = registry
    rt = app[RUNTIME]

    def health_changed(st: InstanceHealth, old: Status) -> None:
        feed_health_to_breaker(app, st, old)

    health = HealthMonitor(rt.upstream_credentials, on_change=health_changed, on_check=metrics.checked)
    app[HEALTH] = health

    def breaker_wait(server: str, url: str) -> float:
        br = registry.peek(server, url)
        if br is None or br.state is not State.OPEN or not br.policy.enabled or br.policy.mode == "shadow":
            return 0.0
        return max(0.0, br.open_until - registry.clock())

    balancer = Balancer(health.healthy, breaker_wait)
    app[BALANCER] = balancer
    rt.picker = balancer.pick
    rt.forwarder = ResilientForwarder(
        app[POOLS],
        settings.http.sse_keepalive_seconds,
        repick=lambda name, server, exclude: balancer.choose(name, server, exclude=tuple(exclude)),
        track=balancer.begin,
        metrics=metrics,
    )

    holder = app[REDIS]
    if holder.client is not None:
        registry.shared = RedisBreakerStore(
            holder.client,
            holder.prefix,
            registry.find,
            call_timeout=max(0.05, settings.redis.socket_timeout),
        )

    def shared_available() -> int:
        return int(registry.shared is not None and registry.shared.available)

    app[METRICS].registry.register(
        ResilienceCollector(registry, health, balancer, app[POOLS], shared_available, registry.clock)
    )
    add_routes(app)
    app.cleanup_ctx.append(_lifecycle)


def feed_health_to_breaker(app: web.Application, st: InstanceHealth, old: Status) -> None:
    """Unhealthy trips the instance's breaker; healthy again lets an open one probe at once."""
    registry = app[BREAKERS]
    br = registry.peek(st.server, st.url)
    if br is None or not br.policy.enabled:
        return
    try:
        server = app[POLICY].active.snapshot.servers.get(st.server)
    except AssertionError:  # policy not loaded yet
        return
    if server is None or not server.health.feed_breaker:
        return
    now = registry.clock()
    if st.status == "unhealthy":
        br.trip("health_check", now)
    elif st.status == "healthy" and old == "unhealthy":
        br.expedite(now)
        if registry.shared is not None:
            registry.shared.expedite(br)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    registry = app[BREAKERS]
    health = app[HEALTH]
    if registry.shared is not None:
        registry.shared.start()
    await health.start()
    yield
    await health.stop()
    if registry.shared is not None:
        await registry.shared.stop()
