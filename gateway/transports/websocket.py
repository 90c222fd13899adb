"""WebSocket on routes with `transport: websocket`: client -> gateway WS at `/mcp/{server}` -> upstream WS.

Credentials are checked once, at the upgrade (client_guard + authn), and so is the route (authz: a tenant that may
not reach the server is refused with an HTTP answer before any upstream socket is opened). Every text frame is then
its own request context running authz, limits and the breaker (and observed by audit and metrics), so a reload or a
limit applies per message. A refused request gets a JSON-RPC error frame with its id and the socket stays open.
Frames are handled in order, one at a time, so the upstream sees them in the order the client sent them. A request
id may be in flight only once per socket (a second one is refused, `duplicate_request_id`); every upstream frame
holding a tools list (an object or an array, whatever its id) is filtered for the socket's principal. Close codes
cross in both directions; pings keep both sockets alive (aiohttp heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable

import aiohttp
import orjson
import structlog
from aiohttp import WSMsgType, web

from gateway.chain import CONNECT_STAGES, MESSAGE_STAGES, Chain, note_refusal
from gateway.context import RequestContext, UpstreamOutcome
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    UpstreamUnavailable,
    error_payload,
)
from gateway.jsonrpc import Kind, best_effort_id, parse_message
from gateway.policy.store import Active, PolicyStore
from gateway.sessions import SessionStore
from gateway.transports.common import ContextFactory, default_route_prepare, refuse_unusable_route, render
from gateway.transports.inflight import InFlightIds, Key
from gateway.transports.listchanged import authz_of
from gateway.transports.lists import CallerLists
from gateway.transports.metrics import TransportMetrics
from gateway.upstream.choice import UpstreamChoice
from gateway.upstream.credentials import UpstreamCredentials
from gateway.upstream.pool import UpstreamPools
from gateway.upstream.routing import check_presented, presented_session_id
from gateway.upstream.stdio.forwarder import StdioForwarder
from gateway.upstream.stdio.socket import StdioSocket
from gateway.upstream.websocket import SUBPROTOCOL, connect_upstream, sendable_close_code

log = structlog.get_logger("gateway.transports.websocket")

# WebSocket frames carry no version header; batches (2025-03-26 only) are not accepted on this transport
NO_BATCH_VERSION = "2025-06-18"


class WebSocketHandler:
    def __init__(
        self,
        *,
        policy: PolicyStore,
        transport_metrics: TransportMetrics,
        new_context: ContextFactory,
        max_body_bytes: int,
        sessions: SessionStore,
        choice: UpstreamChoice,
        pools: UpstreamPools,
        credentials: UpstreamCredentials,
        heartbeat: float,
        stdio: StdioForwarder,
    ) -> None:
        self._policy = policy
        self._transport_metrics = transport_metrics
        self._new_context = new_context
        self._max_body_bytes = max_body_bytes
        self._sessions = sessions
        # the upstream instance: the session's own, or the balancer's pick (gateway/upstream/choice.py)
        self._choose = choice.choose
        self._pools = pools
        self._credentials = credentials
        # http.ws_heartbeat_seconds: pings on both sockets
        self._heartbeat = heartbeat
        # `transport: stdio` routes: a process (or a channel of the shared one) stands for the upstream socket
        # `transport: stdio` routes: a socket per client socket or a shared channel (gateway/upstream/stdio/)
        self._stdio = stdio

    async def __call__(self, request: web.Request, active: Active) -> web.StreamResponse:
        name = request.match_info["server"]
        server = active.snapshot.servers.get(name)
        chain: Chain = active.chain
        ctx = self._new_context(request, active.snapshot, name, server, "websocket")
        if server is None:  # pragma: no cover - the dispatcher only calls with a known server
            raise web.HTTPNotFound()
        # the route's own refusals come after authn and authz, so they cannot tell an anonymous caller or another
        # tenant that the route exists
        if request.method != "GET":
            not_allowed = MethodNotAllowed(
                f"{request.method} is not served on a WebSocket route", headers={"Allow": "GET"}
            )
            prepare = default_route_prepare(self._max_body_bytes) if request.method == "POST" else None
            return await refuse_unusable_route(chain, ctx, not_allowed, prepare)
        client = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,),
            heartbeat=self._heartbeat,
            autoclose=False,
            autoping=True,
            max_msg_size=server.max_body_bytes or self._max_body_bytes,
            compress=False,
        )
        if not client.can_prepare(request).ok:
            upgrade = InvalidRequest(
                "this route speaks WebSocket: send an upgrade request",
                status=426,
                reason="upgrade_required",
                headers={"Upgrade": "websocket"},
            )
            return await refuse_unusable_route(chain, ctx, upgrade)
        # the upgrade itself is a request: credentials and the route's authorization, then the upstream socket;
        # refusals are plain HTTP answers, and a refused upgrade never costs an upstream connection
        held: list[Callable[[], None]] = []  # the socket's places under the stream caps, kept while it is open
        try:
            presented = presented_session_id(request.headers)
            chain.begin_trace(ctx)
            await chain.admit(ctx, CONNECT_STAGES)
            if presented is not None:
                await check_presented(ctx, self._sessions, presented)
            # a socket holds an upstream connection for as long as it is open, like a GET event stream: it is
            # charged like one and takes a place under the key's and tenant's stream caps (docs/rate-limits.md), so
            # one key's idle sockets cannot take every upstream connection of the route
            await chain.admit(ctx, UPGRADE_LIMIT_STAGES)
            held, ctx.releases = ctx.releases, []
            url = await self._choose(ctx)
            upstream: aiohttp.ClientWebSocketResponse | StdioSocket
            if server.transport == "stdio":
                upstream = await self._stdio.connect(ctx, server, url)
            else:
                upstream = await connect_upstream(
                    ctx,
                    self._pools,
                    server,
                    url,
                    heartbeat=self._heartbeat,
                    extra_headers=self._credentials(ctx.snapshot, name),
                )
        except GatewayError as err:
            _release(held)
            note_refusal(ctx, err)
            resp = render(ctx, server, err)
            chain.finish(ctx)
            return resp
        except BaseException:
            _release(held)
            raise
        try:
            await client.prepare(request)
        except BaseException:
            _release(held)
            await upstream.close(code=1001)
            raise
        ctx.http_status = 101
        ctx.session_id = uuid.uuid4().hex  # groups this socket's messages in audit
        chain.finish(ctx)
        conn = _Connection(self._policy, self._transport_metrics, request, ctx, client, upstream, url)
        gauge = self._transport_metrics.ws_connections.labels(name)
        gauge.inc()
        try:
            await conn.run()
        finally:
            gauge.dec()
            _release(held)
        return client


# the rate-limit stage at the upgrade: the socket's cost and its places under the stream caps
UPGRADE_LIMIT_STAGES: tuple[str, ...] = ("ratelimit",)
# refusals after which a socket is closed (1008, policy violation): its credential will not become good again
CREDENTIAL_GONE = frozenset({"credential_expired", "key_revoked"})


def _release(held: list[Callable[[], None]]) -> None:
    while held:
        held.pop()()


class _Connection:
    """One client socket and its upstream socket."""

    def __init__(
        self,
        policy: PolicyStore,
        transport_metrics: TransportMetrics,
        request: web.Request,
        upgrade: RequestContext,
        client: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse | StdioSocket,
        url: str,
    ) -> None:
        self._policy = policy
        self._request = request
        self._upgrade = upgrade
        self._client = client
        self._upstream = upstream
        self._url = url
        self._in_flight = InFlightIds()  # ids of requests relayed whose answer has not come back
        self._claimed: list[Key] = []  # what the frame being handled claimed (frames are handled one at a time)
        self._lists = CallerLists(policy, upgrade)
        self._seq = 0
        metrics = transport_metrics.ws_messages
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
            if not self._credential_good():
                # an idle client sends no frame to be refused: the server's messages must stop all the same
                await client.close(code=1008, message=b"credential no longer valid")
                await upstream.close(code=1000)
                return
            if msg.type is WSMsgType.TEXT:
                data = await self._lists.pass_on(msg.data, self._in_flight)
                if data is None:
                    self._upgrade.notes["dropped_unfilterable"] = True
                    log.warning(
                        "upstream frame that may hold a tools list is not JSON; dropped",
                        server=self._upgrade.server_name,
                    )
                    continue
                await client.send_str(data)
                self._out_ok.inc()
            elif msg.type is WSMsgType.BINARY:
                # one JSON-RPC message per *text* frame, both ways: a binary frame would reach the client unfiltered
                # (the SDKs parse binary frames too), so it ends the socket as a client's binary frame does
                await client.close(code=1003, message=b"text frames only")
                await upstream.close(code=1003)
                return
            elif msg.type is WSMsgType.CLOSE:
                code = sendable_close_code(upstream.close_code, abnormal=1011)
                await client.close(code=code, message=_reason(msg.extra))
                await upstream.close(code=code)
                return
            else:
                break
        await client.close(code=sendable_close_code(upstream.close_code, abnormal=1011))

    def _credential_good(self) -> bool:
        """The socket's credential as authz judges a frame's (expiry; an API key's revocation under the policy in
        force), for what the server sends: a dict lookup per frame."""
        principal = self._upgrade.principal
        if principal is None:
            return True
        if principal.expires_at is not None and principal.expires_at <= time.time():
            return False
        authz = authz_of(self._policy.active)
        return authz is None or authz.key_still_valid(principal)

    async def _message(self, text: str) -> None:
        """One client frame through authz, limits and breaker, then upstream; a refusal answers on the socket."""
        active = self._policy.active
        up = self._upgrade
        server = active.snapshot.servers.get(up.server_name)
        if server is None or up.server is None or server.transport != up.server.transport:
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
        self._claimed = []
        try:
            await chain.run(ctx, self._forward, prepare=self._prepare, stages=MESSAGE_STAGES)
        except GatewayError as err:
            self._in_flight.release_keys(self._claimed)  # refused: the upstream never saw it
            self._in_refused.inc()
            rpc_id = ctx.rpc_id if ctx.message is not None else ctx.notes.get("rpc_id")
            is_request = ctx.message is None or any(e.kind is Kind.REQUEST for e in ctx.envelopes)
            if is_request:
                await self._client.send_str(orjson.dumps(error_payload(err, rpc_id)).decode())
            if err.reason in CREDENTIAL_GONE:
                # the socket's credential is no longer good (expired, revoked): nothing more can pass on it
                await self._client.close(code=1008, message=b"credential no longer valid")

    async def _prepare(self, ctx: RequestContext) -> None:
        await _parse(ctx)
        self._claimed = self._in_flight.claim(ctx.envelopes)  # a duplicate id raises (stage session)
        for env in ctx.envelopes:
            if env.method == "notifications/cancelled" and env.params is not None:
                # a cancelled request gets no answer (MCP), so its id is no longer in flight
                request_id = env.params.get("requestId")
                if isinstance(request_id, str | int) and not isinstance(request_id, bool):
                    self._in_flight.release(request_id)

    async def _forward(self, ctx: RequestContext) -> None:
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
