"""Streamable HTTP at `/mcp/{server}`: POST (one message or a 2025-03-26 batch), GET (server stream), DELETE."""

from __future__ import annotations

import uuid

from aiohttp import web

from gateway.chain import Chain, note_refusal
from gateway.context import RequestContext
from gateway.errors import (
    BodyTooLarge,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    render_error,
)
from gateway.jsonrpc import best_effort_id, parse_message
from gateway.metrics import METRICS
from gateway.policy.servers import ServerPolicy
from gateway.policy.store import POLICY
from gateway.runtime import RUNTIME, Runtime
from gateway.upstream.routing import after_response, resolve_upstream

_MAX_REQUEST_ID = 128


def request_id_of(request: web.BaseRequest) -> str:
    rid = request.headers.get("X-Request-ID")
    if rid and len(rid) <= _MAX_REQUEST_ID and rid.isascii() and rid.isprintable():
        return rid
    return uuid.uuid4().hex


async def read_body(request: web.BaseRequest, cap: int) -> bytes:
    """Read the body under `cap`; refuse early on a declared length over it, and stop reading past it."""
    declared = request.content_length
    if declared is not None and declared > cap:
        raise BodyTooLarge(f"request body larger than {cap} bytes", data={"limitBytes": cap})
    buf = bytearray()
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        buf += chunk
        if len(buf) > cap:
            raise BodyTooLarge(f"request body larger than {cap} bytes", data={"limitBytes": cap})
    return bytes(buf)


def _origin_ok(rt: Runtime, origin: str | None) -> bool:
    return origin is None or origin in rt.allowed_origins


class StreamableHttpHandler:
    def __init__(self, app: web.Application) -> None:
        self._app = app

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        app = self._app
        rt = app[RUNTIME]
        metrics = app[METRICS]
        active = app[POLICY].active
        chain: Chain = active.chain
        server_name = request.match_info["server"]
        server = active.snapshot.servers.get(server_name)
        headers = request.headers
        ctx = RequestContext(
            request_id=request_id_of(request),
            snapshot=active.snapshot,
            server_name=server_name,
            server=server,
            client_ip=rt.client_ip.resolve(request.remote, headers.get("X-Forwarded-For")),
            transport="streamable-http",
            http_method=request.method,
            request=request,
            headers=headers,
            session_id=headers.get("Mcp-Session-Id"),
            protocol_version=headers.get("MCP-Protocol-Version"),
        )
        metrics.in_flight.inc()
        try:
            if server is None:
                return self._refuse_early(chain, ctx, NotFound(f"no MCP server named {server_name!r}"))
            if not _origin_ok(rt, headers.get("Origin")):
                return self._refuse_early(chain, ctx, Forbidden("Origin not allowed", reason="bad_origin"))
            if request.method == "POST":
                prepare = self._prepare_post
            elif server.eras == "modern":
                return self._refuse_early(
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
                return self._render(ctx, server, err)
        finally:
            metrics.in_flight.dec()

    async def _prepare_post(self, ctx: RequestContext) -> None:
        assert ctx.request is not None and ctx.server is not None
        cap = ctx.server.max_body_bytes or self._app[RUNTIME].max_body_bytes
        body = await read_body(ctx.request, cap)
        ctx.body = body
        ctx.bytes_in = len(body)
        try:
            ctx.message = parse_message(body, ctx.protocol_version)
        except GatewayError:
            ctx.notes["rpc_id"] = best_effort_id(body)
            raise

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
        await after_response(ctx, rt.sessions, resp.status, resp.headers.get("Mcp-Session-Id"))
        return await rt.forwarder.relay(ctx, ctx.request, resp)

    def _render(self, ctx: RequestContext, server: ServerPolicy | None, err: GatewayError) -> web.Response:
        rpc_id = ctx.rpc_id if ctx.message is not None else ctx.notes.get("rpc_id")
        compat = bool(server and server.compat_status_200 and err.status not in (400, 404, 405, 413))
        resp = render_error(
            err, rpc_id, request_id=ctx.request_id, extra_headers=ctx.response_headers, status_200=compat
        )
        ctx.http_status = resp.status
        return resp

    def _refuse_early(self, chain: Chain, ctx: RequestContext, err: GatewayError) -> web.Response:
        """A refusal before the chain runs (unknown route, bad Origin): still rendered once and observed."""
        err.stage = err.stage or "route"
        note_refusal(ctx, err)
        resp = self._render(ctx, ctx.server, err)
        chain.finish(ctx)
        return resp
