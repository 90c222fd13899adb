"""Streamable HTTP at `/mcp/{server}`: POST (one message or a 2025-03-26 batch), GET (server stream), DELETE.

This handler owns the `/mcp/{server}` route for every transport: a route configured `transport: sse` or
`transport: websocket` is handed to its own handler before anything else happens.
"""

from __future__ import annotations

from aiohttp import web

from gateway import modern
from gateway.chain import Chain
from gateway.context import RequestContext
from gateway.errors import Forbidden, GatewayError, MethodNotAllowed, NotFound
from gateway.h1server import FastRequest
from gateway.metrics import METRICS
from gateway.policy.store import POLICY
from gateway.runtime import RUNTIME
from gateway.transports.common import (
    new_context,
    origin_ok,
    read_and_parse,
    read_body,
    refuse_early,
    render,
    request_id_of,
)
from gateway.transports.legacy_sse import LegacySseHandler
from gateway.transports.websocket import WebSocketHandler
from gateway.upstream.routing import after_response, resolve_upstream

__all__ = ["StreamableHttpHandler", "read_body", "request_id_of"]


class StreamableHttpHandler:
    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._legacy = LegacySseHandler(app)
        self._websocket = WebSocketHandler(app)

    async def __call__(self, request: web.Request | FastRequest) -> web.StreamResponse:
        app = self._app
        rt = app[RUNTIME]
        active = app[POLICY].active
        server_name = request.match_info["server"]
        server = active.snapshot.servers.get(server_name)
        moved = False
        if server is not None and server.transport != "streamable-http":
            if isinstance(request, web.Request):
                if server.transport == "sse":
                    return await self._legacy.dispatch(request, active)
                return await self._websocket(request, active)
            # from the lean server, which saw a Streamable HTTP route when the head arrived: a reload moved it
            moved = True
        metrics = app[METRICS]
        chain: Chain = active.chain
        ctx = new_context(
            request,
            rt,
            active.snapshot,
            server_name,
            server,
            "streamable-http",
            session_id=request.headers.get("Mcp-Session-Id"),
        )
        metrics.request_started()
        try:
            if server is None:
                return refuse_early(chain, ctx, NotFound(f"no MCP server named {server_name!r}"))
            if moved:
                retry = GatewayError(
                    "the route's transport changed while the request arrived; retry",
                    reason="route_changed",
                    status=503,
                    headers={"Retry-After": "1"},
                )
                return refuse_early(chain, ctx, retry)
            if not origin_ok(rt, request.headers.get("Origin")):
                return refuse_early(chain, ctx, Forbidden("Origin not allowed", reason="bad_origin"))
            if request.method == "POST":
                prepare = self._prepare_post
            elif server.eras == "modern":
                return refuse_early(
                    chain,
                    ctx,
                    MethodNotAllowed(
                        f"{request.method} is not served on a 2026-07-28 route", headers={"Allow": "POST"}
                    ),
                )
            else:
                prepare = None
            try:
                return await chain.run(ctx, self._forward, prepare=prepare)
            except GatewayError as err:
                return render(ctx, server, err)
        finally:
            metrics.request_finished()

    async def _prepare_post(self, ctx: RequestContext) -> None:
        assert ctx.server is not None
        await read_and_parse(ctx, self._app[RUNTIME], ctx.protocol_version)
        modern.classify(ctx, ctx.server.eras)

    async def _forward(self, ctx: RequestContext) -> web.StreamResponse:
        rt = self._app[RUNTIME]
        server = ctx.server
        assert server is not None and ctx.request is not None
        url = await resolve_upstream(ctx, rt.sessions, rt.picker)
        resp = await rt.forwarder.open(
            ctx,
            server,
            url,
            ctx.http_method,
            extra_headers=rt.upstream_credentials(ctx.snapshot, ctx.server_name),
        )
        try:
            await after_response(ctx, rt.sessions, resp.status, resp.headers.get("Mcp-Session-Id"))
        except BaseException:
            # relay() owns the response from here on; before it, a failure (the client leaving, a store error) must
            # still give the upstream connection back rather than leave it to the garbage collector
            resp.close()
            raise
        return await rt.forwarder.relay(ctx, ctx.request, resp)
