"""Factory of the transports' shared state: the session store (memory or Redis), the legacy SSE stream registry and
event bus, the per-session in-flight ids and order, transport metrics. The routes are added by gateway/app.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from gateway.lifecycle import Lifecycle
from gateway.redis_client import RedisHolder
from gateway.sessions import MemorySessionStore, SessionCaps, SessionStore
from gateway.sessions_redis import RedisSessionStore
from gateway.settings import Settings
from gateway.transports.inflight import SessionInFlight
from gateway.transports.legacy_bus import LegacyEventBus
from gateway.transports.metrics import TransportMetrics
from gateway.transports.order import SessionOrder
from gateway.upstream.legacy_sse import LiveStreams


@dataclass(frozen=True, slots=True)
class TransportState:
    metrics: TransportMetrics
    sessions: SessionStore
    live_streams: LiveStreams
    in_flight: SessionInFlight
    # per-session order of a GET stream and later POSTs (gateway/transports/order.py)
    order: SessionOrder
    # legacy SSE events for a stream held by another worker (Redis only)
    bus: LegacyEventBus | None


def build_transports(
    settings: Settings, registry: CollectorRegistry, redis: RedisHolder
) -> tuple[TransportState, tuple[Lifecycle, ...]]:
    metrics = TransportMetrics(registry)
    live = LiveStreams()
    ttl = settings.http.session_ttl_seconds
    caps = SessionCaps(settings.http.max_sessions_per_key, settings.http.max_sessions_per_tenant)
    lifecycles: list[Lifecycle] = []
    store: SessionStore
    bus: LegacyEventBus | None = None
    if redis.client is not None:
        errors = metrics.session_store_errors
        shared = RedisSessionStore(
            redis.client,
            redis.prefix,
            ttl,
            MemorySessionStore(ttl, caps=caps),
            on_error=lambda op: errors.labels(op).inc(),
            caps=caps,
        )
        store = shared
        tasks: list[asyncio.Task[None]] = []

        async def start_write_back() -> None:
            # bindings made or ended while Redis was unreachable reach it once it answers again
            tasks.append(asyncio.get_running_loop().create_task(shared.run_sync()))

        async def stop_write_back() -> None:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        lifecycles.append(Lifecycle("session write-back", start_write_back, stop_write_back))
        bus = LegacyEventBus(redis.client, redis.prefix, live)
        started_bus = bus

        async def start_bus() -> None:
            started_bus.start()

        lifecycles.append(Lifecycle("legacy event bus", start_bus, started_bus.stop))
    else:
        store = MemorySessionStore(ttl, caps=caps)
    waits = metrics.first_get_waits
    order = SessionOrder(on_first_get=lambda arrived: waits.labels("arrived" if arrived else "timeout").inc())
    state = TransportState(metrics, store, live, SessionInFlight(), order, bus)
    return state, tuple(lifecycles)
