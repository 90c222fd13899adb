"""Wiring of the transports: session store (memory or Redis), legacy SSE routes and registry, transport metrics.

`/mcp/{server}` itself is routed by the app to `StreamableHttpHandler`, which hands `transport: sse` and
`transport: websocket` routes to their handlers. The legacy transport needs two more paths: the stream at
`/mcp/{server}/sse` and the POST endpoint under `/mcp/{server}/...` named by the rewritten `endpoint` event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.metrics import METRICS
from gateway.redis_client import REDIS
from gateway.runtime import RUNTIME
from gateway.sessions import SESSIONS, MemorySessionStore, RedisSessionStore, SessionStore
from gateway.settings import Settings
from gateway.transports.legacy_bus import LEGACY_BUS, LegacyEventBus
from gateway.transports.legacy_sse import LegacySseHandler
from gateway.transports.metrics import TRANSPORT_METRICS, TransportMetrics
from gateway.upstream.legacy_sse import LIVE_STREAMS, LiveStreams


def install(app: web.Application, settings: Settings) -> None:
    metrics = TransportMetrics(app[METRICS].registry)
    app[TRANSPORT_METRICS] = metrics
    app[LIVE_STREAMS] = LiveStreams()

    ttl = settings.http.session_ttl_seconds
    holder = app[REDIS]
    store: SessionStore
    if holder.client is not None:
        errors = metrics.session_store_errors
        store = RedisSessionStore(
            holder.client, holder.prefix, ttl, MemorySessionStore(ttl), on_error=lambda op: errors.labels(op).inc()
        )
    else:
        store = MemorySessionStore(ttl)
    app[SESSIONS] = store
    app[RUNTIME].sessions = store

    if holder.client is not None:
        bus = LegacyEventBus(holder.client, holder.prefix, app[LIVE_STREAMS])
        app[LEGACY_BUS] = bus

        async def bus_ctx(_: web.Application) -> AsyncIterator[None]:
            bus.start()
            yield
            await bus.stop()

        app.cleanup_ctx.append(bus_ctx)

    legacy = LegacySseHandler(app)
    app.router.add_route("GET", "/mcp/{server}/sse", legacy.route)
    app.router.add_route("POST", "/mcp/{server}/{tail:.+}", legacy.route)
