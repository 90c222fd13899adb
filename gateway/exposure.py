"""What each listener serves, to whom: the Host / Origin check (gateway/hosts.py) on every path aiohttp serves, and
`/metrics` + `/admin/*` on a listener of their own (`admin_listen`), as Envoy and agentgateway keep their admin
interface off the data plane.

The check runs as the outermost aiohttp middleware, so no route (MCP transports, `/metrics`, `/admin/*`,
`/healthz`, `/readyz`, OAuth metadata, aiohttp's own 404 and 405) is reached with a refused Host or Origin. The lean
HTTP server (gateway/net/h1server.py) serves only `POST` and `GET /mcp/{server}` and never passes through aiohttp's
middlewares; the Streamable HTTP handler, which it calls, runs the same check for its requests. Refusals are
rendered and observed (audit, metrics) like every other refusal before the chain.

With `admin_listen.port` set, the admin listener is a second aiohttp server on the same application and request handler
whose requests carry a mark (`ON_ADMIN_LISTENER`): it serves `/metrics` and `/admin/*` only, and the main listener
answers those paths 404. With `workers: N` the admin listener is bound by worker 0 only (gateway/server.py): every
worker's metrics are merged into whichever process answers a scrape, so one bind serves them all, and a second
process binding the same port would need SO_REUSEPORT, which would spread scrapes and admin calls over workers for
no gain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from gateway.errors import GatewayError, NotFound
from gateway.hosts import HostPolicy, refusal_notes
from gateway.policy.servers import ServerPolicy
from gateway.policy.snapshot import Snapshot
from gateway.policy.store import PolicyStore
from gateway.settings import Settings
from gateway.transports.common import ContextFactory, refuse_early

log = structlog.get_logger("gateway.exposure")

# request key set on every request that arrived on the admin listener
ON_ADMIN_LISTENER = "mgw.admin_listener"
# paths any browser origin may read (RFC 9728 protected-resource metadata)
PUBLIC_PREFIX = "/.well-known/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_admin_path(path: str) -> bool:
    return path in ("/metrics", "/admin") or path.startswith("/admin/")


def _describe(request: web.Request, snapshot: Snapshot) -> tuple[str, ServerPolicy | None, str]:
    """(server name, server policy, transport) for the audit record of a refusal on any path."""
    path = request.path
    if path.startswith("/mcp/"):
        name = request.match_info.get("server") or "_unknown"
        server = snapshot.servers.get(name)
        return name, server, server.transport if server is not None else "streamable-http"
    if is_admin_path(path):
        return ("_metrics", None, "http") if path == "/metrics" else ("_admin", None, "admin")
    return "_gateway", None, "http"


def refuse(policy: PolicyStore, new_context: ContextFactory, request: web.Request, err: GatewayError) -> web.Response:
    """The well-formed, observed answer to a request refused before any route ran."""
    active = policy.active
    name, server, transport = _describe(request, active.snapshot)
    ctx = new_context(request, active.snapshot, name, server, transport)
    ctx.notes.update(refusal_notes(err, request.headers, request.raw_path))
    return refuse_early(active.chain, ctx, err)


def install(
    app: web.Application, settings: Settings, hosts: HostPolicy, policy: PolicyStore, new_context: ContextFactory
) -> None:
    split = settings.admin_listen.port is not None

    @web.middleware
    async def exposure(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        # public discovery documents (RFC 9728 metadata, `Access-Control-Allow-Origin: *`) are meant to be read by
        # browser-based clients of any origin: Host is checked, Origin is not
        err = hosts.refusal(request.headers, check_origin=not path.startswith(PUBLIC_PREFIX), target=request.raw_path)
        if err is None and split and is_admin_path(path) != (ON_ADMIN_LISTENER in request):
            # the same answer as for a path that does not exist: this listener does not serve it
            err = NotFound("no such route on this listener", reason="not_found")
        if err is None:
            return await handler(request)
        return refuse(policy, new_context, request, err)

    app.middlewares.append(exposure)


class AdminListener:
    """The `admin_listen` listener: the application's own request handler on a second socket, every request
    marked so the exposure middleware knows where it arrived."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        guard: Callable[[web.Server], Callable[[], asyncio.BaseProtocol]],
    ) -> None:
        self._runner = runner
        # the front door's connection handlers over this listener's server: the same head and body deadlines and
        # per-peer cap as the main listener (a plain aiohttp server here let a slow client hold connections, and
        # the descriptors both listeners share, for the hour-long keep-alive)
        self._guard = guard
        self.host = host
        self.port = port
        self.server: web.Server | None = None
        self._listener: asyncio.Server | None = None

    async def start(self) -> None:
        main = self._runner.server
        assert main is not None, "the runner is set up first"
        make_request = main.request_factory

        def marked(*args: Any) -> web.BaseRequest:
            request = make_request(*args)
            request[ON_ADMIN_LISTENER] = True
            return request

        # the main server's own settings (handler_args, access log): aiohttp keeps them only in `_kwargs`
        kwargs: dict[str, Any] = dict(getattr(main, "_kwargs", {}))
        self.server = web.Server(
            main.request_handler,
            request_factory=marked,
            handler_cancellation=main.handler_cancellation,
            **kwargs,
        )
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._guard(self.server), self.host, self.port, backlog=128)
        sockets = self._listener.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("admin listening", host=self.host, port=self.port, paths="/metrics, /admin/*")

    def stop_accepting(self) -> None:
        """Drain, step 1: no new connections; idle ones close, busy ones after their answer."""
        if self._listener is not None:
            self._listener.close()
        if self.server is not None:
            self.server.pre_shutdown()

    async def shutdown(self, timeout: float) -> None:
        self.stop_accepting()
        if self.server is not None:
            await self.server.shutdown(timeout)
