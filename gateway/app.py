"""build_app(settings): the aiohttp application over one `Gateway` (gateway/compose.py), every route in one place.

The Gateway is stored under one AppKey (`GATEWAY`); its components' lifecycles become cleanup contexts in build
order (stopped in reverse); the policy is loaded last at startup, once every component the filters need is up.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import web

from gateway import exposure, framing, http_contract
from gateway.admin import openapi as admin_openapi
from gateway.admin import reload as admin_reload
from gateway.admin import servers as admin_servers
from gateway.admin.audit import install_routes as install_audit_routes
from gateway.admin.audited import AdminGate
from gateway.admin.keys import install_routes as install_key_routes
from gateway.audit.answers import answer_hook
from gateway.auth.resource import protected_resource_metadata
from gateway.compose import GATEWAY, Gateway, build_gateway
from gateway.lifecycle import cleanup_context
from gateway.metrics import METRICS, metrics_handler
from gateway.net import frontdoor
from gateway.net.h1server import Handler
from gateway.oauth.routes import install_routes as install_oauth_routes
from gateway.probes import healthz, readyz
from gateway.settings import Settings
from gateway.transports.legacy_sse import LegacySseHandler
from gateway.transports.listchanged import ListWatch
from gateway.transports.streamable import StreamableHttpHandler
from gateway.transports.websocket import WebSocketHandler

log = structlog.get_logger("gateway.app")

# the Streamable HTTP handler, which the lean server (gateway/net/h1server.py) calls directly
STREAMABLE_HANDLER: web.AppKey[Handler] = web.AppKey("streamable_handler")


def build_app(settings: Settings) -> web.Application:
    cap = settings.http.max_body_bytes
    # aiohttp's own cap is a backstop; the handler enforces the per-route cap and answers 413 in our format
    app = web.Application(client_max_size=cap + 1, handler_args={"max_field_size": 65536})
    gw = build_gateway(settings)
    app[GATEWAY] = gw
    # the metrics endpoint, the samplers and the loop-lag probe (gateway/metrics.py, gateway/looplag.py) read it
    app[METRICS] = gw.metrics

    framing.install(app)
    # Host / Origin checks and the admin listener split on every path aiohttp serves
    exposure.install(app, settings, gw.hosts, gw.policy, gw.new_context)
    if gw.audit.journal is not None:
        app.on_response_prepare.append(answer_hook(gw.audit.journal))
    for lifecycle in gw.lifecycles:
        app.cleanup_ctx.append(cleanup_context(lifecycle))

    # the session streams this process relays (Streamable HTTP GET streams, legacy HTTP+SSE streams): told of the
    # list changes a reload makes, ended when a reload or the admin API revokes their key
    lists = ListWatch()
    gw.policy.listeners.append(lists.reloaded)
    legacy = LegacySseHandler(
        policy=gw.policy,
        metrics=gw.metrics,
        transport_metrics=gw.transports.metrics,
        new_context=gw.new_context,
        max_body_bytes=cap,
        sessions=gw.sessions,
        choice=gw.choice,
        forwarder=gw.forwarder,
        credentials=gw.credentials,
        live_streams=gw.transports.live_streams,
        bus=gw.transports.bus,
        public_url=settings.public_url,
        keepalive_seconds=settings.http.sse_keepalive_seconds,
        stdio=gw.stdio.forwarder,
        lists=lists,
    )
    websocket = WebSocketHandler(
        policy=gw.policy,
        transport_metrics=gw.transports.metrics,
        new_context=gw.new_context,
        max_body_bytes=cap,
        sessions=gw.sessions,
        choice=gw.choice,
        pools=gw.pools,
        credentials=gw.credentials,
        heartbeat=settings.http.ws_heartbeat_seconds,
        stdio=gw.stdio.forwarder,
    )
    streamable = StreamableHttpHandler(
        policy=gw.policy,
        metrics=gw.metrics,
        new_context=gw.new_context,
        hosts=gw.hosts,
        max_body_bytes=cap,
        sessions=gw.sessions,
        choice=gw.choice,
        forwarder=gw.forwarder,
        credentials=gw.credentials,
        in_flight=gw.transports.in_flight,
        order=gw.transports.order,
        legacy=legacy,
        websocket=websocket,
        stdio=gw.stdio.forwarder,
        lists=lists,
    )
    # the bound coroutine method, not the instance: aiohttp wraps any other callable in an extra coroutine per
    # request (and warns that this is deprecated)
    handle = streamable.__call__
    app[STREAMABLE_HANDLER] = handle
    # the legacy transport's two more paths: the stream, and the POST endpoint its `endpoint` event names
    app.router.add_route("GET", "/mcp/{server}/sse", legacy.route)
    app.router.add_route("POST", "/mcp/{server}/{tail:.+}", legacy.route)
    app.router.add_get(
        "/.well-known/oauth-protected-resource/mcp/{server}",
        protected_resource_metadata(gw.policy, gw.auth),
    )
    if gw.oauth is not None:
        install_oauth_routes(app)
    # every admin route: the admin-scope check, the admin model, audit of whatever happens (gateway/admin/audited.py)
    gate = AdminGate(gw.policy, gw.client_ip, gw.audit)
    install_key_routes(app, gate, gw.auth, gw.policy, on_revoked=lists.key_revoked)
    admin_servers.add_routes(app, gate, admin_servers.ServerStatus(gw.policy, gw.breakers, gw.health, gw.balancer))
    install_audit_routes(app, settings, gate)
    admin_reload.add_routes(app, gate, gw.policy)
    admin_openapi.add_routes(app, gate)
    app.router.add_route("POST", "/mcp/{server}", handle)
    app.router.add_route("GET", "/mcp/{server}", handle)
    app.router.add_route("DELETE", "/mcp/{server}", handle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz(gw.readiness, gw.policy))
    app.router.add_get("/metrics", metrics_handler)
    # slow clients, the per-peer connection cap, and aiohttp's own refusals in the gateway's error format
    frontdoor.install(app, settings.http, gw.metrics.registry)
    http_contract.install(app, http_contract.Refusal(gw.policy, gw.new_context))

    app.on_startup.append(_start_policy)
    return app


async def _start_policy(app: web.Application) -> None:
    gw: Gateway = app[GATEWAY]
    store = gw.policy
    snapshot = store.load_initial()
    log.info("policy loaded", version=snapshot.version, servers=sorted(snapshot.servers))
    store.install_sighup(asyncio.get_running_loop())
    if gw.settings.policy_poll_seconds > 0:
        task = asyncio.create_task(store.watch(gw.settings.policy_poll_seconds), name="policy-watcher")

        async def _stop(_: web.Application) -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app.on_cleanup.append(_stop)
