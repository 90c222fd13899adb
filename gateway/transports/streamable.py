"""Streamable HTTP at `/mcp/{server}`: POST (one message or a 2025-03-26 batch), GET (server stream), DELETE.

This handler owns the `/mcp/{server}` route for every transport: a route configured `transport: sse` or
`transport: websocket` is handed to its own handler before anything else happens.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway import protocol_era
from gateway.chain import Chain
from gateway.context import RequestContext
from gateway.errors import GatewayError, MethodNotAllowed, NotFound
from gateway.hosts import HostPolicy, refusal_notes
from gateway.metrics import GatewayMetrics
from gateway.policy.store import PolicyStore
from gateway.responder import OwnResponder, answers_itself
from gateway.sessions import SessionStore
from gateway.transports.common import (
    ContextFactory,
    authn_before_body,
    default_route_prepare,
    read_and_parse,
    read_body,
    refuse_early,
    refuse_unusable_route,
    render,
    request_id_of,
)
from gateway.transports.inflight import SessionInFlight, distinct_ids
from gateway.transports.legacy_sse import LegacySseHandler
from gateway.transports.listchanged import ListWatch
from gateway.transports.order import SessionOrder
from gateway.transports.websocket import WebSocketHandler
from gateway.upstream.choice import UpstreamChoice
from gateway.upstream.credentials import UpstreamCredentials
from gateway.upstream.http import HttpForwarder
from gateway.upstream.inbox import Inbox
from gateway.upstream.routing import (
    after_response,
    creates_session,
    presented_session_id,
    release_session,
    reserve_session,
)
from gateway.upstream.stdio.forwarder import StdioForwarder

__all__ = ["StreamableHttpHandler", "read_body", "request_id_of"]


class StreamableHttpHandler:
    def __init__(
        self,
        *,
        policy: PolicyStore,
        metrics: GatewayMetrics,
        new_context: ContextFactory,
        hosts: HostPolicy,
        max_body_bytes: int,
        sessions: SessionStore,
        choice: UpstreamChoice,
        forwarder: HttpForwarder,
        credentials: UpstreamCredentials,
        in_flight: SessionInFlight,
        order: SessionOrder,
        legacy: LegacySseHandler,
        websocket: WebSocketHandler,
        stdio: StdioForwarder,
        lists: ListWatch,
    ) -> None:
        self._policy = policy
        self._metrics = metrics
        self._new_context = new_context
        # Host / Origin checks (DNS rebinding) for the lean server's requests, gateway/hosts.py
        self._hosts = hosts
        self._max_body_bytes = max_body_bytes
        self._sessions = sessions
        # the upstream instance: the session's own, or the balancer's pick (gateway/upstream/choice.py)
        self._choose = choice.choose
        self._forwarder = forwarder
        self._credentials = credentials
        self._session_in_flight = in_flight
        # the forward step of `transport: stdio` routes (gateway/upstream/stdio/forwarder.py)
        self._stdio = stdio
        # the handlers of `transport: sse` and `transport: websocket` routes, which arrive at /mcp/{server} too
        self._legacy = legacy
        self._websocket = websocket
        # per-session order of a GET stream and later POSTs (gateway/transports/order.py)
        self.order = order
        # session GET streams told of list changes a reload makes (gateway/transports/listchanged.py)
        self.lists = lists

    async def __call__(self, request: web.Request | OwnResponder) -> web.StreamResponse:
        # Host / Origin (DNS rebinding): aiohttp's requests were checked by the exposure middleware
        # (gateway/exposure.py); the lean server's never pass through it
        exposed = self._hosts.refusal(request.headers) if answers_itself(request) else None
        active = self._policy.active
        server_name = request.match_info["server"]
        server = active.snapshot.servers.get(server_name)
        moved = False
        if (
            server is not None
            and server.transport == "stdio"
            and isinstance(request, web.Request)
            and request.headers.get("Upgrade", "").lower() == "websocket"
        ):
            # a WebSocket client of a stdio server (gateway/upstream/stdio/socket.py)
            return await self._websocket(request, active)
        if server is not None and server.transport not in ("streamable-http", "stdio"):
            if isinstance(request, web.Request):
                if server.transport == "sse":
                    return await self._legacy.dispatch(request, active)
                return await self._websocket(request, active)
            # from the lean server, which saw a Streamable HTTP route when the head arrived: a reload moved it
            moved = True
        metrics = self._metrics
        chain: Chain = active.chain
        bad_session: GatewayError | None = None
        try:
            session_id = presented_session_id(request.headers)
        except GatewayError as err:
            session_id, bad_session = None, err
        ctx = self._new_context(
            request,
            active.snapshot,
            server_name,
            server,
            "streamable-http",
            session_id=session_id,
        )
        metrics.request_started()
        try:
            if exposed is not None:
                ctx.notes.update(refusal_notes(exposed, request.headers))
                return refuse_early(chain, ctx, exposed)
            if bad_session is not None:
                return refuse_early(chain, ctx, bad_session)
            if server is None:
                # authenticated and authorized first, like a real route: the answer must not tell routes apart
                unknown = NotFound(f"no MCP server named {server_name!r}")
                prepare = default_route_prepare(self._max_body_bytes) if request.method == "POST" else None
                # and like a real route, a large body is not waited for before the credentials are checked
                early = request.method == "POST" and authn_before_body(request, None, self._max_body_bytes)
                return await refuse_unusable_route(chain, ctx, unknown, prepare, authn_first=early)
            if moved:
                retry = GatewayError(
                    "the route's transport changed while the request arrived; retry",
                    reason="route_changed",
                    status=503,
                    headers={"Retry-After": "1"},
                )
                return refuse_early(chain, ctx, retry)
            authn_first = False
            if request.method == "POST":
                prepare = self._prepare_post
                authn_first = authn_before_body(request, server, self._max_body_bytes)
            elif server.eras == "modern":
                # after authn and authz, like every answer that would tell a caller the route exists
                return await refuse_unusable_route(
                    chain,
                    ctx,
                    MethodNotAllowed(
                        f"{request.method} is not served on a 2026-07-28 route", headers={"Allow": "POST"}
                    ),
                )
            elif session_id is not None:
                # a session's GET stream takes its place in the session's order once its caller is known
                prepare, authn_first = self._prepare_get, True
            else:
                prepare = None
            try:
                return await chain.run(ctx, self._forward, prepare=prepare, authn_first=authn_first)
            except GatewayError as err:
                return render(ctx, server, err)
        finally:
            metrics.request_finished()

    async def _prepare_post(self, ctx: RequestContext) -> None:
        assert ctx.server is not None
        await read_and_parse(ctx, self._max_body_bytes, ctx.protocol_version)
        protocol_era.classify(ctx, ctx.server.eras)

    async def _prepare_get(self, ctx: RequestContext) -> None:
        principal = ctx.principal
        if principal is None or ctx.session_id is None:
            return
        ticket = self.order.opening((ctx.server_name, ctx.session_id, principal.binding_id), ctx.started)
        if ticket is not None:
            # refused by a later stage, or the client left: the POSTs waiting for it go on at once
            ctx.releases.append(ticket.settle)

    async def _forward(self, ctx: RequestContext) -> web.StreamResponse:
        sessions = self._sessions
        forwarder = self._forwarder
        server = ctx.server
        assert server is not None and ctx.request is not None
        url = await self._choose(ctx)
        binding = ctx.session_binding
        order_key = (ctx.server_name, ctx.session_id or "", binding.principal) if binding is not None else None
        if order_key is not None and ctx.http_method == "POST":
            # the caller owns the session (checked above): a GET of it that arrived first is open upstream first
            order, arrived = self.order, ctx.started
            if order.expecting and ctx.message is not None and ctx.message.has_requests:
                # the session's GET may reach the gateway a moment after this POST (gateway/transports/order.py)
                arrived = await order.wait_for_first_get(order_key, arrived)
            await order.wait_for_earlier(order_key, arrived)
        message = ctx.message
        if message is not None:
            if ctx.session_binding is not None:
                # a session the caller owns: none of its ids may be in flight twice (transports/inflight.py)
                release = self._session_in_flight.claim(ctx.server_name, ctx.session_id or "", message.envelopes)
                if release is not None:
                    ctx.releases.append(release)
            elif message.is_batch:
                distinct_ids(message.envelopes)
        # a place under the caller's session caps is held before the upstream is asked to create a session
        reservation = await reserve_session(ctx, sessions) if creates_session(ctx) else None
        opener = self._stdio if server.transport == "stdio" else forwarder
        try:
            resp = await opener.open(
                ctx,
                server,
                url,
                ctx.http_method,
                extra_headers=self._credentials(ctx.snapshot, ctx.server_name),
            )
        except BaseException:
            # a client that left cancels the handler too: its place must not stay held for RESERVATION_SECONDS
            if reservation is not None:
                await asyncio.shield(release_session(ctx, sessions, reservation))
            raise
        finally:
            if order_key is not None and ctx.http_method == "GET":
                # the upstream answered the GET's headers (its stream is open there), or it failed
                self.order.opened(order_key, ctx.started)
        try:
            new_session = resp.headers.get("Mcp-Session-Id")
            await after_response(ctx, sessions, resp.status, new_session, reservation=reservation)
            if reservation is not None and new_session and 200 <= resp.status < 300 and opener is forwarder:
                # the new session's GET stream will find an upstream connection ready
                forwarder.prewarm_stream(server, url)
                if ctx.principal is not None and _answers_server_requests(ctx):
                    # its first request POST waits a moment for the GET the client is about to open
                    self.order.expect_stream((ctx.server_name, new_session, ctx.principal.binding_id))
        except BaseException:
            # relay() owns the response from here on; before it, a failure (the client leaving, a store error) must
            # still give the upstream connection back rather than leave it to the garbage collector
            resp.close()
            raise
        inbox: Inbox | None = None
        if order_key is not None and ctx.http_method == "GET" and resp.status == 200 and ctx.principal is not None:
            inbox = Inbox()
            # told of list changes, ended by a revocation or with its credential
            ctx.releases.append(self.lists.follow(self._policy.active, ctx.server_name, ctx.principal, inbox))
        return await forwarder.relay(ctx, ctx.request, resp, inbox=inbox)


# a client that declares one of these at `initialize` may be asked a question a call causes, and an upstream may ask
# it on the session's GET stream. Not `roots`: many clients declare it and never open a GET, and a roots/list is not
# caused by a POST, so holding the POST would not help it
_SERVER_REQUEST_CAPABILITIES = ("sampling", "elicitation")


def _answers_server_requests(ctx: RequestContext) -> bool:
    message = ctx.message
    if message is None or message.is_batch or not message.envelopes:
        return False
    params = message.envelopes[0].params
    caps = params.get("capabilities") if params is not None else None
    return isinstance(caps, dict) and any(isinstance(caps.get(name), dict) for name in _SERVER_REQUEST_CAPABILITIES)
