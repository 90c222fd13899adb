"""WebSocket on routes with `transport: websocket`: client -> gateway WS at `/mcp/{server}` -> upstream WS.

Credentials are checked once, at the upgrade (client_guard + authn). Every text frame is then its own request
context running authz, limits and the breaker (and observed by audit and metrics), so a reload or a limit applies
per message. A refused request gets a JSON-RPC error frame with its id and the socket stays open. Frames are
handled in order, one at a time, so the upstream sees them in the order the client sent them. Close codes cross in
both directions; pings keep both sockets alive (aiohttp heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import WSMsgType, web

from gateway.chain import CONNECT_STAGES, MESSAGE_STAGES, Chain, note_refusal
from gateway.context import RequestContext, UpstreamOutcome
from gateway.errors import (
    Forbidden,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    UpstreamUnavailable,
    error_payload,
)
from gateway.jsonrpc import JsonRpcId, Kind, best_effort_id, parse_message
from gateway.policy.store import POLICY, Active
from gateway.runtime import RUNTIME
from gateway.transports.common import new_context, origin_ok, refuse_early, render
from gateway.transports.metrics import TRANSPORT_METRICS
from gateway.upstream.pool import POOLS
from gateway.upstream.routing import resolve_upstream
from gateway.upstream.websocket import SUBPROTOCOL, connect_upstream, sendable_close_code

log = structlog.get_logger("gateway.transports.websocket")

# WebSocket frames carry no version header; batches (2025-03-26 only) are not accepted on this transport
NO_BATCH_VERSION = "2025-06-18"
_MAX_PENDING = 1024


class WebSocketHandler:
    def __init__(self, app: web.Application) -> None:
        self._app = app

    def _heartbeat(self) -> float:
        from gateway.app import SETTINGS  # app imports the transports: resolve at call time

        return self._app[SETTINGS].http.ws_heartbeat_seconds

    async def __call__(self, request: web.Request, active: Active) -> web.StreamResponse:
        rt = self._app[RUNTIME]
        name = request.match_info["server"]
        server = active.snapshot.servers.get(name)
        chain: Chain = active.chain
        ctx = new_context(request, rt, active.snapshot, name, server, "websocket")
        if server is None:  # pragma: no cover - the dispatcher only calls with a known server
            raise web.HTTPNotFound()
        if not origin_ok(rt, request.headers.get("Origin")):
            return refuse_early(chain, ctx, Forbidden("Origin not allowed", reason="bad_origin"))
        if request.method != "GET":
            not_allowed = MethodNotAllowed(
                f"{request.method} is not served on a WebSocket route", headers={"Allow": "GET"}
            )
            return refuse_early(chain, ctx, not_allowed)
        client = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,),
            heartbeat=self._heartbeat(),
            autoclose=False,
            autoping=True,
            max_msg_size=server.max_body_bytes or rt.max_body_bytes,
            compress=False,
        )
        if not client.can_prepare(request).ok:
            upgrade = InvalidRequest(
                "this route speaks WebSocket: send an upgrade request",
                status=426,
                reason="upgrade_required",
                headers={"Upgrade": "websocket"},
            )
            return refuse_early(chain, ctx, upgrade)
        # the upgrade itself is a request: credentials, then the upstream socket; refusals are plain HTTP answers
        try:
            await chain.admit(ctx, CONNECT_STAGES)
            url = await resolve_upstream(ctx, rt.sessions, rt.picker)
            upstream = await connect_upstream(
                ctx,
                self._app[POOLS],
                server,
                url,
                heartbeat=self._heartbeat(),
                extra_headers=rt.upstream_credentials(ctx.snapshot, name),
            )
        except GatewayError as err:
            note_refusal(ctx, err)
            resp = render(ctx, server, err)
            chain.finish(ctx)
            return resp
        try:
            await client.prepare(request)
        except BaseException:
            await upstream.close(code=1001)
            raise
        ctx.http_status = 101
        ctx.session_id = uuid.uuid4().hex  # groups this socket's messages in audit
        chain.finish(ctx)
        conn = _Connection(self._app, request, ctx, client, upstream, url)
        gauge = self._app[TRANSPORT_METRICS].ws_connections.labels(name)
        gauge.inc()
        try:
            await conn.run()
        finally:
            gauge.dec()
        return client


class _Connection:
    """One client socket and its upstream socket."""

    def __init__(
        self,
        app: web.Application,
        request: web.Request,
        upgrade: RequestContext,
        client: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        url: str,
    ) -> None:
        self._app = app
        self._request = request
        self._upgrade = upgrade
        self._client = client
        self._upstream = upstream
        self._url = url
        self._pending: dict[JsonRpcId, Any] = {}  # request id -> transform of its answer
        self._seq = 0
        metrics = app[TRANSPORT_METRICS].ws_messages
        server = upgrade.server_name
        self._in_ok = metrics.labels(server, "in", "relayed")
        self._in_refused = metrics.labels(server, "in", "refused")
        self._out_ok = metrics.labels(server, "out", "relayed")

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def run(self) -> None:
        from_client = asyncio.create_task(self._client_to_upstream(), name="ws-client-pump")
        from_upstream = asyncio.create_task(self._upstream_to_client(), name="ws-upstream-pump")
        try:
            _done, pending = await asyncio.wait({from_client, from_upstream}, return_when=asyncio.FIRST_COMPLETED)
            # one side closed and its pump closed the other socket: give the other pump a moment to see it
            if pending:
                await asyncio.wait(pending, timeout=5)
        finally:
            for task in (from_client, from_upstream):
                task.cancel()
            for task in (from_client, from_upstream):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if not self._upstream.closed:
                with contextlib.suppress(Exception):
                    await self._upstream.close(code=1001)
            if not self._client.closed:
                with contextlib.suppress(Exception):
                    await self._client.close(code=1011)

    async def _client_to_upstream(self) -> None:
        client, upstream = self._client, self._upstream
        async for msg in client:
            if msg.type is WSMsgType.TEXT:
                await self._message(msg.data)
            elif msg.type is WSMsgType.BINARY:
                # one JSON-RPC message per *text* frame; binary has no meaning here
                await client.close(code=1003, message=b"text frames only")
                await upstream.close(code=1001)
                return
            elif msg.type is WSMsgType.CLOSE:
                code = sendable_close_code(client.close_code, abnormal=1001)
                await upstream.close(code=code, message=_reason(msg.extra))
                await client.close(code=code)
                return
            else:  # ERROR, CLOSED
                break
        await upstream.close(code=sendable_close_code(client.close_code, abnormal=1001))

    async def _upstream_to_client(self) -> None:
        client, upstream = self._client, self._upstream
        async for msg in upstream:
            if msg.type is WSMsgType.TEXT:
                data: str = msg.data
                if self._pending:
                    data = self._transformed(data)
                await client.send_str(data)
                self._out_ok.inc()
            elif msg.type is WSMsgType.BINARY:
                await client.send_bytes(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                code = sendable_close_code(upstream.close_code, abnormal=1011)
                await client.close(code=code, message=_reason(msg.extra))
                await upstream.close(code=code)
                return
            else:
                break
        await client.close(code=sendable_close_code(upstream.close_code, abnormal=1011))

    async def _message(self, text: str) -> None:
        """One client frame through authz, limits and breaker, then upstream; a refusal answers on the socket."""
        active = self._app[POLICY].active
        up = self._upgrade
        server = active.snapshot.servers.get(up.server_name)
        if server is None or server.transport != "websocket":
            # the route left the policy (or changed transport) since the upgrade: this socket has no route any more
            await self._client.close(code=1001, message=b"route removed")
            return
        body = text.encode()
        ctx = RequestContext(
            request_id=f"{up.request_id}.{self._next_seq()}",  # the upgrade's id + frame number: logs correlate
            snapshot=active.snapshot,
            server_name=up.server_name,
            server=server,
            client_ip=up.client_ip,
            transport="websocket",
            http_method="WS",
            request=self._request,
            headers=up.headers,
            body=body,
            bytes_in=len(body),
            session_id=up.session_id,
            principal=up.principal,
            upstream_url=self._url,
        )
        chain: Chain = active.chain
        try:
            await chain.run(ctx, self._forward, prepare=_parse, stages=MESSAGE_STAGES)
        except GatewayError as err:
            self._in_refused.inc()
            rpc_id = ctx.rpc_id if ctx.message is not None else ctx.notes.get("rpc_id")
            is_request = ctx.message is None or any(e.kind is Kind.REQUEST for e in ctx.envelopes)
            if is_request:
                await self._client.send_str(orjson.dumps(error_payload(err, rpc_id)).decode())

    async def _forward(self, ctx: RequestContext) -> None:
        if ctx.transform is not None:
            for env in ctx.envelopes:
                if env.kind is Kind.REQUEST and env.id is not None:
                    if len(self._pending) >= _MAX_PENDING:
                        del self._pending[next(iter(self._pending))]
                    self._pending[env.id] = ctx.transform
        start = time.perf_counter()
        try:
            await self._upstream.send_str(ctx.body.decode())
        except (ConnectionError, RuntimeError) as exc:
            latency = time.perf_counter() - start
            ctx.report_outcome(UpstreamOutcome(self._url, None, "reset", latency))
            raise UpstreamUnavailable(
                "upstream socket is closed", reason="upstream_unreachable", data={"detail": type(exc).__name__}
            ) from None
        latency = time.perf_counter() - start
        ctx.upstream_latency = latency
        ctx.http_status = 200  # relayed; the answer (if any) comes later as its own frame
        ctx.report_outcome(UpstreamOutcome(self._url, 200, None, latency))
        self._in_ok.inc()

    def _transformed(self, data: str) -> str:
        try:
            msg: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
        if not isinstance(msg, dict) or "method" in msg:
            return data
        transform = self._pending.pop(msg.get("id"), None)
        if transform is None:
            return data
        new = transform(msg)
        return data if new is msg else orjson.dumps(new).decode()


async def _parse(ctx: RequestContext) -> None:
    try:
        ctx.message = parse_message(ctx.body, NO_BATCH_VERSION)
    except GatewayError:
        ctx.notes["rpc_id"] = best_effort_id(ctx.body)
        raise


def _reason(extra: object) -> bytes:
    if isinstance(extra, str):
        return extra.encode()[:120]  # a close reason must fit in a control frame
    return b""
