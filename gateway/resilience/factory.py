"""Factory of resilience: breakers (+ Redis sharing), health checks, balancer, the upstream choice over it, the
retrying forwarder, metrics.

The state lives outside any policy snapshot, so a reload keeps breaker states and health verdicts. The breaker
filter's `build()` hands each new snapshot to the registry and the health monitor, which is how checks follow
reloads. The admin routes (/admin/servers) are added by gateway/app.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from gateway.lifecycle import Lifecycle
from gateway.policy.snapshot import Snapshot
from gateway.redis_client import RedisHolder
from gateway.resilience.metrics import ResilienceCollector, ResilienceMetrics
from gateway.resilience.registry import BreakerRegistry
from gateway.resilience.shared import RedisBreakerStore
from gateway.resilience.state import State
from gateway.sessions import SessionStore
from gateway.settings import Settings
from gateway.upstream.balancer import Balancer
from gateway.upstream.choice import UpstreamChoice
from gateway.upstream.health import Credentials, HealthMonitor, InstanceHealth, Status, TransportProbe
from gateway.upstream.pool import UpstreamPools
from gateway.upstream.resilient import ResilientForwarder


@dataclass(frozen=True, slots=True)
class Resilience:
    metrics: ResilienceMetrics
    breakers: BreakerRegistry
    health: HealthMonitor
    balancer: Balancer
    # the one step that chooses a request's upstream instance (gateway/upstream/choice.py)
    choice: UpstreamChoice
    forwarder: ResilientForwarder


def build_resilience(
    settings: Settings,
    registry: CollectorRegistry,
    redis: RedisHolder,
    pools: UpstreamPools,
    credentials: Credentials,
    sessions: SessionStore,
    active_snapshot: Callable[[], Snapshot | None],
    probes: Mapping[str, TransportProbe] | None = None,
) -> tuple[Resilience, Lifecycle]:
    metrics = ResilienceMetrics(registry)
    breakers = BreakerRegistry(on_transition=metrics.transition)

    def health_changed(st: InstanceHealth, old: Status) -> None:
        feed_health_to_breaker(breakers, active_snapshot(), st, old)

    health = HealthMonitor(credentials, on_change=health_changed, on_check=metrics.checked, probes=probes)

    def breaker_wait(server: str, url: str) -> float:
        br = breakers.peek(server, url)
        if br is None or br.state is not State.OPEN or not br.policy.enabled or br.policy.mode == "shadow":
            return 0.0
        return max(0.0, br.open_until - breakers.clock())

    balancer = Balancer(health.healthy, breaker_wait)
    choice = UpstreamChoice(sessions, balancer)
    pools.stream_events = metrics
    forwarder = ResilientForwarder(
        pools,
        settings.http.sse_keepalive_seconds,
        repick=choice.another,
        track=choice.begin,
        metrics=metrics,
        client=settings.upstream.client,
    )
    if redis.client is not None:
        breakers.shared = RedisBreakerStore(
            redis.client,
            redis.prefix,
            breakers.find,
            call_timeout=max(0.05, settings.redis.socket_timeout),
        )

    def shared_available() -> int:
        return int(breakers.shared is not None and breakers.shared.available)

    registry.register(ResilienceCollector(breakers, health, balancer, pools, shared_available, breakers.clock))

    async def start() -> None:
        if breakers.shared is not None:
            breakers.shared.start()
        await health.start()

    async def stop() -> None:
        await health.stop()
        if breakers.shared is not None:
            await breakers.shared.stop()

    return Resilience(metrics, breakers, health, balancer, choice, forwarder), Lifecycle("resilience", start, stop)


def feed_health_to_breaker(
    registry: BreakerRegistry, snapshot: Snapshot | None, st: InstanceHealth, old: Status
) -> None:
    """Unhealthy trips the instance's breaker; healthy again lets an open one probe at once."""
    br = registry.peek(st.server, st.url)
    if br is None or not br.policy.enabled or snapshot is None:
        return
    server = snapshot.servers.get(st.server)
    if server is None or not server.health.feed_breaker:
        return
    now = registry.clock()
    if st.status == "unhealthy":
        br.trip("health_check", now)
    elif st.status == "healthy" and old == "unhealthy":
        br.expedite(now)
        if registry.shared is not None:
            registry.shared.expedite(br)
