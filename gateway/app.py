"""build_app(settings): wires every component under typed AppKeys; startup and cleanup.

Subsystems (rate limiting, breakers, audit, ...) install themselves through `INSTALLERS`: each gets the app and the
settings, registers its AppKeys, cleanup contexts, observers and routes. The policy is loaded last at startup, once
every component the filters need is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import web

from gateway.chain import build_chain
from gateway.clientip import ClientIpResolver
from gateway.filters.authn import API_KEY_SECRET
from gateway.h1server import Handler
from gateway.logging import AccessLog
from gateway.metrics import METRICS, GatewayMetrics, metrics_handler
from gateway.observers import add_observer
from gateway.ops import healthz, readyz
from gateway.policy.snapshot import Snapshot
from gateway.policy.store import POLICY, PolicyStore, ReloadResult
from gateway.redis_client import install_redis
from gateway.runtime import RUNTIME, Runtime
from gateway.sessions import SESSIONS, MemorySessionStore
from gateway.settings import Settings
from gateway.transports.streamable import StreamableHttpHandler
from gateway.upstream.http import HttpForwarder
from gateway.upstream.pool import POOLS, UpstreamPools

log = structlog.get_logger("gateway.app")

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
# the Streamable HTTP handler, which the lean server (gateway/h1server.py) calls directly
STREAMABLE_HANDLER: web.AppKey[Handler] = web.AppKey("streamable_handler")

# module paths with an `install(app, settings)`; order matters only for observers (audit last sees everything)
INSTALLERS: tuple[str, ...] = (
    "gateway.transports.install",
    "gateway.auth.install",
    "gateway.ratelimit.install",
    "gateway.breaker.install",
    "gateway.audit.install",
    "gateway.admin.install",
)


def _allowed_origins(settings: Settings) -> frozenset[str]:
    from yarl import URL

    u = URL(settings.public_url)
    own = f"{u.scheme}://{u.host}" + (f":{u.port}" if u.port and not u.is_default_port() else "")
    return frozenset({own, *settings.http.allowed_origins})


def build_app(settings: Settings) -> web.Application:
    cap = settings.http.max_body_bytes
    # aiohttp's own cap is a backstop; the handler enforces the per-route cap and answers 413 in our format
    app = web.Application(client_max_size=cap + 1, handler_args={"max_field_size": 65536})
    app[SETTINGS] = settings
    metrics = GatewayMetrics()
    app[METRICS] = metrics
    pools = UpstreamPools()
    app[POOLS] = pools
    try:
        secret = settings.api_keys.hmac_secret.resolve(Path(settings.base_dir)).encode()
    except LookupError as exc:
        log.warning("API key secret unavailable; API keys will be refused", error=str(exc))
        secret = b""
    app[API_KEY_SECRET] = secret
    sessions = MemorySessionStore()
    app[SESSIONS] = sessions
    install_redis(app, settings)
    app[RUNTIME] = Runtime(
        sessions=sessions,
        forwarder=HttpForwarder(pools, settings.http.sse_keepalive_seconds),
        client_ip=ClientIpResolver(settings.http.trusted_proxies),
        allowed_origins=_allowed_origins(settings),
        max_body_bytes=cap,
    )

    for path in INSTALLERS:
        module = importlib.import_module(path)
        module.install(app, settings)
    add_observer(app, metrics)
    if settings.logging.access_log:
        add_observer(app, AccessLog())

    def on_result(result: ReloadResult, snapshot: Snapshot) -> None:
        metrics.policy_loaded(result.ok, snapshot.version)

    store = PolicyStore(settings.path(settings.policies_dir), lambda snap: build_chain(snap, app), on_result)
    app[POLICY] = store

    # the bound coroutine method, not the instance: aiohttp wraps any other callable in an extra coroutine per
    # request (and warns that this is deprecated)
    handle = StreamableHttpHandler(app).__call__
    app[STREAMABLE_HANDLER] = handle
    app.router.add_route("POST", "/mcp/{server}", handle)
    app.router.add_route("GET", "/mcp/{server}", handle)
    app.router.add_route("DELETE", "/mcp/{server}", handle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)

    app.on_startup.append(_start_policy)
    app.cleanup_ctx.append(_pools_ctx)
    return app


async def _pools_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[POOLS].close()


async def _start_policy(app: web.Application) -> None:
    store = app[POLICY]
    settings = app[SETTINGS]
    snapshot = store.load_initial()
    log.info("policy loaded", version=snapshot.version, servers=sorted(snapshot.servers))
    store.install_sighup(asyncio.get_running_loop())
    if settings.policy_poll_seconds > 0:
        task = asyncio.create_task(store.watch(settings.policy_poll_seconds), name="policy-watcher")

        async def _stop(_: web.Application) -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app.on_cleanup.append(_stop)
