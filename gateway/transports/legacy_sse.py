"""Legacy HTTP+SSE (2024-11-05) on routes with `transport: sse`.

GET `/mcp/{server}` (or `/mcp/{server}/sse`) opens the upstream event stream through the chain. Its `endpoint`
event is rewritten onto this route (`/messages/?session_id=X` -> `/mcp/{server}/messages/?session_id=X`) and the
session is bound to the caller and to the upstream instance (and its POST URL) that issued it. Every POST of the
session runs the chain on its own and goes to that same instance, which answers 202 and puts the response on the
stream. A refused POST gets the HTTP error and, when this process holds the session's stream, the same JSON-RPC
error as a `message` event on it (that is where the client waits for the answer); with Redis, a replica that does
not hold the stream publishes the event to the one that does (legacy_bus). The binding ends with the stream:
the upstream forgets a legacy session when its GET closes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway.chain import Chain
from gateway.context import RequestContext
from gateway.errors import (
    Forbidden,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    SessionNotFound,
    error_payload,
)
from gateway.h1server import prepare
from gateway.jsonrpc import Envelope, Kind, Message
from gateway.metrics import METRICS
from gateway.policy.store import POLICY, Active
from gateway.runtime import RUNTIME
from gateway.sessions import SessionBinding
from gateway.settings import Settings
from gateway.transports.common import new_context, origin_ok, read_and_parse, refuse_early, render
from gateway.transports.legacy_bus import LEGACY_BUS
from gateway.transports.metrics import TRANSPORT_METRICS
from gateway.upstream.h1client import H1BodyError, H1Response
from gateway.upstream.headers import client_response_headers
from gateway.upstream.http import KEEPALIVE_COMMENT
from gateway.upstream.legacy_sse import LIVE_STREAMS, LiveStream, Transform, rewrite_endpoint, session_id_of
from gateway.upstream.routing import bound_session, resolve_upstream
from gateway.upstream.sse import SseEvent, SseParser, encode_event

log = structlog.get_logger("gateway.transports.legacy_sse")

LEGACY_VERSION = "2024-11-05"  # no batches in this version


class LegacySseHandler:
    def __init__(self, app: web.Application) -> None:
        self._app = app

    def _settings(self) -> Settings:
        from gateway.app import SETTINGS  # app imports the transports: resolve at call time

        return self._app[SETTINGS]

    async def route(self, request: web.Request) -> web.StreamResponse:
        """The extra routes (`/mcp/{server}/sse`, POST `/mcp/{server}/{tail}`): only on `transport: sse` routes."""
        active = self._app[POLICY].active
        server = active.snapshot.servers.get(request.match_info["server"])
        if server is None or server.transport != "sse":
            rt = self._app[RUNTIME]
            ctx = new_context(request, rt, active.snapshot, request.match_info["server"], server, "sse")
            name = request.match_info["server"]
            return refuse_early(active.chain, ctx, NotFound(f"no legacy SSE route for server {name!r}"))
        if request.method == "GET":
            return await self._stream(request, active)
        return await self._post(request, active)

    async def dispatch(self, request: web.Request, active: Active) -> web.StreamResponse:
        """`/mcp/{server}` on a `transport: sse` route."""
        if request.method == "GET":
            return await self._stream(request, active)
        if request.method == "POST" and session_id_of(request.query_string) is not None:
            return await self._post(request, active)
        rt = self._app[RUNTIME]
        name = request.match_info["server"]
        ctx = new_context(request, rt, active.snapshot, name, active.snapshot.servers.get(name), "sse")
        # 405 is what tells a dual-transport client to fall back to GET and the `endpoint` event
        err = MethodNotAllowed(f"{request.method} is not served on a legacy HTTP+SSE route", headers={"Allow": "GET"})
        return refuse_early(active.chain, ctx, err)

    # ------------------------------------------------------------------------------------------------ GET stream

    async def _stream(self, request: web.Request, active: Active) -> web.StreamResponse:
        rt = self._app[RUNTIME]
        name = request.match_info["server"]
        server = active.snapshot.servers.get(name)
        ctx = new_context(request, rt, active.snapshot, name, server, "sse")
        chain: Chain = active.chain
        metrics = self._app[METRICS]
        metrics.request_started()
        try:
            if not origin_ok(rt, request.headers.get("Origin")):
                return refuse_early(chain, ctx, Forbidden("Origin not allowed", reason="bad_origin"))
            try:
                return await chain.run(ctx, self._forward_stream)
            except GatewayError as err:
                return render(ctx, server, err)
        finally:
            metrics.request_finished()

    async def _forward_stream(self, ctx: RequestContext) -> web.StreamResponse:
        rt = self._app[RUNTIME]
        server = ctx.server
        assert server is not None and ctx.request is not None
        url = await resolve_upstream(ctx, rt.sessions, rt.picker)
        resp = await rt.forwarder.open(
            ctx, server, url, "GET", extra_headers=rt.upstream_credentials(ctx.snapshot, ctx.server_name)
        )
        # a retrying forwarder may have moved a failed connect to another instance: bind to the one that answered
        url = ctx.upstream_url or url
        if resp.status != 200 or not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            return await rt.forwarder.relay(ctx, ctx.request, resp)
        gauge = self._app[TRANSPORT_METRICS].legacy_streams.labels(ctx.server_name)
        gauge.inc()
        try:
            return await self._relay_stream(ctx, url, resp)
        finally:
            gauge.dec()

    async def _relay_stream(self, ctx: RequestContext, upstream_url: str, resp: H1Response) -> web.StreamResponse:
        rt = self._app[RUNTIME]
        settings = self._settings()
        streams = self._app[LIVE_STREAMS]
        assert ctx.request is not None and ctx.principal is not None
        headers = client_response_headers(resp.headers)
        headers.update(ctx.response_headers)
        headers["X-Request-ID"] = ctx.request_id
        headers["Cache-Control"] = "no-cache, no-transform"
        headers["X-Accel-Buffering"] = "no"
        out = web.StreamResponse(status=200, headers=headers)
        ctx.http_status = 200
        live = LiveStream(ctx.principal.binding_id, out)
        session_id: str | None = None
        keepalive = settings.http.sse_keepalive_seconds
        parser = SseParser()
        try:
            await prepare(out, ctx.request)
            while True:
                try:
                    async with asyncio.timeout(keepalive):
                        chunk = await resp.content.readany()
                except TimeoutError:
                    # the parser hands out whole events, so between two writes we are always at a boundary
                    async with live.lock:
                        await out.write(KEEPALIVE_COMMENT)
                    continue
                if not chunk:
                    rest = parser.leftover()
                    if rest:
                        async with live.lock:
                            await out.write(rest)
                    break
                for ev in parser.feed(chunk):
                    raw = ev.raw
                    if session_id is None and ev.event == "endpoint" and ev.data is not None:
                        raw, session_id = await self._bind(ctx, upstream_url, ev, settings.public_url)
                        if session_id is not None:
                            ctx.session_id = session_id
                            streams.add(ctx.server_name, session_id, live)
                    elif ev.is_message and ev.data and '"tools"' in ev.data:
                        raw = await self._filtered(ctx, live, ev)
                    async with live.lock:
                        await out.write(raw)
                    ctx.bytes_out += len(raw)
            await out.write_eof()
        except H1BodyError as exc:
            log.warning("upstream legacy stream ended abnormally", request_id=ctx.request_id, error=type(exc).__name__)
            ctx.notes["stream_error"] = type(exc).__name__
        except ConnectionResetError:
            ctx.notes["stream_error"] = "client_gone"
        finally:
            resp.close()
            if session_id is not None:
                streams.remove(ctx.server_name, session_id, live)
                # the upstream session dies with its stream; forget the binding on every replica
                await rt.sessions.delete(ctx.server_name, session_id)
        return out

    async def _bind(
        self, ctx: RequestContext, upstream_url: str, ev: SseEvent, public_url: str
    ) -> tuple[bytes, str | None]:
        assert ev.data is not None and ctx.principal is not None
        rt = self._app[RUNTIME]
        rewritten = rewrite_endpoint(ev.data, upstream_url, f"/mcp/{ctx.server_name}", public_url)
        if rewritten.session_id is None:
            log.warning("legacy endpoint without a session id; POSTs cannot be routed", server=ctx.server_name)
        else:
            binding = SessionBinding(ctx.principal.binding_id, ctx.server_name, upstream_url, rewritten.upstream)
            await rt.sessions.put(ctx.server_name, rewritten.session_id, binding)
        raw = encode_event(data=rewritten.client, event="endpoint", id=ev.id, retry=ev.retry)
        return raw, rewritten.session_id

    # ------------------------------------------------------------------------------------------------ POST

    async def _post(self, request: web.Request, active: Active) -> web.StreamResponse:
        rt = self._app[RUNTIME]
        name = request.match_info["server"]
        server = active.snapshot.servers.get(name)
        ctx = new_context(request, rt, active.snapshot, name, server, "sse")
        ctx.session_id = session_id_of(request.query_string)
        chain: Chain = active.chain
        metrics = self._app[METRICS]
        metrics.request_started()
        try:
            if not origin_ok(rt, request.headers.get("Origin")):
                return refuse_early(chain, ctx, Forbidden("Origin not allowed", reason="bad_origin"))
            try:
                return await chain.run(ctx, self._forward_post, prepare=self._prepare_post)
            except GatewayError as err:
                await self._inject_refusal(ctx, err)
                return render(ctx, server, err)
        finally:
            metrics.request_finished()

    async def _prepare_post(self, ctx: RequestContext) -> None:
        await read_and_parse(ctx, self._app[RUNTIME], LEGACY_VERSION)
        if ctx.session_id is None:
            raise InvalidRequest("legacy SSE POST needs the session_id of its endpoint", reason="missing_session")

    async def _forward_post(self, ctx: RequestContext) -> web.StreamResponse:
        rt = self._app[RUNTIME]
        server = ctx.server
        assert server is not None and ctx.request is not None and ctx.session_id is not None
        binding = await bound_session(ctx, rt.sessions)
        if binding.endpoint is None:
            raise SessionNotFound("not a legacy SSE session; open the event stream first", reason="session_not_found")
        if ctx.transform is not None:
            self._expect_transform(ctx)
        resp = await rt.forwarder.open(
            ctx, server, binding.endpoint, "POST", extra_headers=rt.upstream_credentials(ctx.snapshot, ctx.server_name)
        )
        if resp.status == 404:
            await rt.sessions.delete(ctx.server_name, ctx.session_id)
        return await rt.forwarder.relay(ctx, ctx.request, resp)

    def _live_stream_of(self, ctx: RequestContext) -> LiveStream | None:
        if ctx.session_id is None or ctx.principal is None:
            return None
        live = self._app[LIVE_STREAMS].get(ctx.server_name, ctx.session_id)
        # only the session's own principal may have anything written on its stream
        if live is None or live.principal != ctx.principal.binding_id:
            return None
        return live

    def _expect_transform(self, ctx: RequestContext) -> None:
        """The answer to this POST arrives on the stream: hand the stream the request's message transform."""
        live = self._live_stream_of(ctx)
        if live is not None and ctx.transform is not None:
            for env in ctx.envelopes:
                if env.kind is Kind.REQUEST and env.id is not None:
                    live.pending[env.id] = ctx.transform

    async def _inject_refusal(self, ctx: RequestContext, err: GatewayError) -> None:
        rpc_id = ctx.rpc_id if ctx.message is not None else None
        if rpc_id is None:  # notifications and responses are never answered
            return
        if ctx.session_id is None or ctx.principal is None:
            return
        event = encode_event(data=orjson.dumps(error_payload(err, rpc_id)).decode(), event="message")
        live = self._live_stream_of(ctx)
        if live is not None:
            delivered = await live.inject(event)
        elif LEGACY_BUS in self._app:
            # the stream may be held by another replica; it checks the principal before writing
            bus = self._app[LEGACY_BUS]
            delivered = await bus.publish(ctx.server_name, ctx.session_id, ctx.principal.binding_id, event)
        else:
            return
        if delivered:
            self._app[TRANSPORT_METRICS].legacy_injected_errors.labels(ctx.server_name).inc()

    async def _filtered(self, ctx: RequestContext, live: LiveStream, ev: SseEvent) -> bytes:
        """A list answer on the stream, filtered for the stream's principal.

        The request's own transform is used when its POST came through this process. When the POST went to another
        replica, this process never saw it, so it asks its own authz stage for the transform of a `tools/list` with
        the answer's id (fail closed: a list is never relayed unfiltered)."""
        assert ev.data is not None
        try:
            msg: Any = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            return ev.raw
        if not isinstance(msg, dict) or "method" in msg or not isinstance(msg.get("result"), dict):
            return ev.raw
        if not isinstance(msg["result"].get("tools"), list):
            return ev.raw
        rpc_id = msg.get("id")
        transform = live.pending.pop(rpc_id, None) if _valid_id(rpc_id) else None
        if transform is None:
            transform = await self._list_transform(ctx, rpc_id)
        if transform is None:
            return ev.raw
        new = transform(msg)
        if new is msg:
            return ev.raw
        return encode_event(data=orjson.dumps(new).decode(), event=ev.event, id=ev.id, retry=ev.retry)

    async def _list_transform(self, ctx: RequestContext, rpc_id: Any) -> Transform | None:
        active = self._app[POLICY].active
        server = active.snapshot.servers.get(ctx.server_name)
        if not _valid_id(rpc_id) or server is None:
            return _drop_tools
        synthetic = RequestContext(
            request_id=ctx.request_id,
            snapshot=active.snapshot,
            server_name=ctx.server_name,
            server=server,
            client_ip=ctx.client_ip,
            transport="sse",
            http_method="POST",
            headers=ctx.headers,
            principal=ctx.principal,
            message=Message([Envelope(Kind.REQUEST, rpc_id, "tools/list")]),
        )
        try:
            # authz alone: this is not a request of its own (no limits, no audit record)
            await active.chain.admit(synthetic, ("authz",))
        except GatewayError:
            return _drop_tools
        return synthetic.transform


def _valid_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _drop_tools(msg: dict[str, Any]) -> dict[str, Any]:
    """The principal may not list tools (any more): show none rather than all."""
    return {**msg, "result": {**msg["result"], "tools": []}}
