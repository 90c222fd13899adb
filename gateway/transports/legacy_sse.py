"""Legacy HTTP+SSE (2024-11-05) on routes with `transport: sse`.

GET `/mcp/{server}` (or `/mcp/{server}/sse`) opens the upstream event stream through the chain. Its `endpoint`
event is rewritten onto this route (`/messages/?session_id=X` -> `/mcp/{server}/messages/?session_id=X`) and the
session is bound to the caller and to the upstream instance (and its POST URL) that issued it. Every POST of the
session runs the chain on its own and goes to that same instance, which answers 202 and puts the response on the
stream. A refused POST gets the HTTP error and, when this process holds the session's stream, the same JSON-RPC
error as a `message` event on it (that is where the client waits for the answer); with Redis, a replica that does
not hold the stream publishes the event to the one that does (legacy_bus). The binding ends with the stream:
the upstream forgets a legacy session when its GET closes.

The endpoint must be on the upstream's own origin (upstream/legacy_sse.py): otherwise the stream ends with an
`error` event and nothing is bound. Every message on the stream is filtered for the stream's principal by its shape
(a tools list in an object or an array, whatever its id), and a request id may be in flight only once per stream.
"""

from __future__ import annotations

import asyncio

import orjson
import structlog
from aiohttp import web

from gateway.chain import SESSION_STAGE, Chain
from gateway.context import RequestContext
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    SessionNotFound,
    UpstreamProtocolError,
    error_payload,
)
from gateway.metrics import GatewayMetrics
from gateway.net.h1client import H1BodyError
from gateway.policy.store import Active, PolicyStore
from gateway.responder import prepare
from gateway.sessions import SessionBinding, SessionStore
from gateway.transports.common import (
    ContextFactory,
    authn_before_body,
    default_route_prepare,
    read_and_parse,
    refuse_unusable_route,
    render,
)
from gateway.transports.legacy_bus import LegacyEventBus
from gateway.transports.listchanged import ListWatch
from gateway.transports.lists import CallerLists
from gateway.transports.metrics import TransportMetrics
from gateway.upstream.choice import UpstreamChoice
from gateway.upstream.credentials import UpstreamCredentials
from gateway.upstream.headers import client_response_headers
from gateway.upstream.http import KEEPALIVE_COMMENT, HttpForwarder
from gateway.upstream.inbox import Inbox
from gateway.upstream.legacy_sse import EndpointRefused, LiveStream, LiveStreams, rewrite_endpoint, session_id_of
from gateway.upstream.response import UpstreamResponse
from gateway.upstream.routing import (
    bind_new_session,
    bound_session,
    check_presented,
    presented_session_id,
    release_session,
    reserve_session,
    valid_session_id,
)
from gateway.upstream.sse import SseEvent, SseParser, encode_event
from gateway.upstream.stdio.forwarder import StdioForwarder
from gateway.upstream.stdio.legacy import stdio_endpoint

log = structlog.get_logger("gateway.transports.legacy_sse")

LEGACY_VERSION = "2024-11-05"  # no batches in this version


class LegacySseHandler:
    def __init__(
        self,
        *,
        policy: PolicyStore,
        metrics: GatewayMetrics,
        transport_metrics: TransportMetrics,
        new_context: ContextFactory,
        max_body_bytes: int,
        sessions: SessionStore,
        choice: UpstreamChoice,
        forwarder: HttpForwarder,
        credentials: UpstreamCredentials,
        live_streams: LiveStreams,
        bus: LegacyEventBus | None,
        public_url: str,
        keepalive_seconds: float,
        stdio: StdioForwarder,
        lists: ListWatch,
    ) -> None:
        self._policy = policy
        self._metrics = metrics
        self._transport_metrics = transport_metrics
        self._new_context = new_context
        self._max_body_bytes = max_body_bytes
        self._sessions = sessions
        # the upstream instance: the session's own, or the balancer's pick (gateway/upstream/choice.py)
        self._choose = choice.choose
        self._forwarder = forwarder
        self._credentials = credentials
        self._live_streams = live_streams
        self._bus = bus
        # the endpoint event is rewritten onto this gateway's own URL (http.sse_keepalive_seconds: comment lines)
        self._public_url = public_url
        self._keepalive = keepalive_seconds
        # `transport: stdio` routes also serve legacy clients at /mcp/{server}/sse (gateway/upstream/stdio/)
        self._stdio = stdio
        # a legacy stream is its session: ended when a reload or the admin API revokes its key, told of list changes
        # (gateway/transports/listchanged.py), like a Streamable HTTP session's GET stream
        self._lists = lists

    async def route(self, request: web.Request) -> web.StreamResponse:
        """The extra routes (`/mcp/{server}/sse`, POST `/mcp/{server}/{tail}`): only on `transport: sse` routes."""
        active = self._policy.active
        server = active.snapshot.servers.get(request.match_info["server"])
        if server is None or server.transport not in ("sse", "stdio"):
            # authenticated and authorized first, like a real legacy route: the answer must not tell routes apart
            name = request.match_info["server"]
            ctx = self._new_context(request, active.snapshot, name, server, "sse")
            not_here = NotFound(f"no legacy SSE route for server {name!r}")
            if request.method != "POST":
                return await refuse_unusable_route(active.chain, ctx, not_here)
            ctx.session_id = session_id_of(request.query_string)
            return await refuse_unusable_route(active.chain, ctx, not_here, self._prepare_post)
        if request.method == "GET":
            return await self._stream(request, active)
        return await self._post(request, active)

    async def dispatch(self, request: web.Request, active: Active) -> web.StreamResponse:
        """`/mcp/{server}` on a `transport: sse` route."""
        if request.method == "GET":
            return await self._stream(request, active)
        if request.method == "POST" and session_id_of(request.query_string) is not None:
            return await self._post(request, active)
        name = request.match_info["server"]
        ctx = self._new_context(request, active.snapshot, name, active.snapshot.servers.get(name), "sse")
        # 405 is what tells a dual-transport client to fall back to GET and the `endpoint` event; given only after
        # authn and authz, so it cannot tell an anonymous caller or another tenant that the route exists
        err = MethodNotAllowed(f"{request.method} is not served on a legacy HTTP+SSE route", headers={"Allow": "GET"})
        prepare = default_route_prepare(self._max_body_bytes) if request.method == "POST" else None
        return await refuse_unusable_route(active.chain, ctx, err, prepare)

    # ------------------------------------------------------------------------------------------------ GET stream

    async def _stream(self, request: web.Request, active: Active) -> web.StreamResponse:
        name = request.match_info["server"]
        server = active.snapshot.servers.get(name)
        ctx = self._new_context(request, active.snapshot, name, server, "sse")
        chain: Chain = active.chain
        metrics = self._metrics
        metrics.request_started()
        try:
            try:
                return await chain.run(ctx, self._forward_stream)
            except GatewayError as err:
                return render(ctx, server, err)
        finally:
            metrics.request_finished()

    async def _forward_stream(self, ctx: RequestContext) -> web.StreamResponse:
        server = ctx.server
        assert server is not None and ctx.request is not None
        # checked after authn and authz, like every answer that would tell a caller the route exists (a 400 here
        # before authentication told an anonymous caller which legacy routes there are: review finding)
        presented = presented_session_id(ctx.request.headers)
        if presented is not None:
            await check_presented(ctx, self._sessions, presented)
        url = await self._choose(ctx)
        # the stream creates the session: hold its place under the caller's session caps before opening it
        reservation: str | None = await reserve_session(ctx, self._sessions)
        opener = self._stdio if server.transport == "stdio" else self._forwarder
        try:
            resp = await opener.open(
                ctx, server, url, "GET", extra_headers=self._credentials(ctx.snapshot, ctx.server_name)
            )
            # a retrying forwarder may have moved a failed connect to another instance: bind to the one that answered
            url = ctx.upstream_url or url
            if resp.status != 200 or not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
                return await self._forwarder.relay(ctx, ctx.request, resp)
            gauge = self._transport_metrics.legacy_streams.labels(ctx.server_name)
            gauge.inc()
            try:
                held = [reservation]
                reservation = None  # the stream owns it now
                return await self._relay_stream(ctx, url, resp, held)
            finally:
                gauge.dec()
        finally:
            if reservation is not None:
                await release_session(ctx, self._sessions, reservation)

    async def _relay_stream(
        self, ctx: RequestContext, upstream_url: str, resp: UpstreamResponse, reservation: list[str | None]
    ) -> web.StreamResponse:
        streams = self._live_streams
        assert ctx.request is not None and ctx.principal is not None
        headers = client_response_headers(resp.headers)
        headers.update(ctx.response_headers)
        headers["X-Request-ID"] = ctx.request_id
        headers["Cache-Control"] = "no-cache, no-transform"
        headers["X-Accel-Buffering"] = "no"
        out = web.StreamResponse(status=200, headers=headers)
        ctx.http_status = 200
        live = LiveStream(ctx.principal.binding_id, out)
        lists = CallerLists(self._policy, ctx)
        session_id: str | None = None
        endpoint_seen = refused = False
        keepalive = self._keepalive
        parser = SseParser()
        inbox = Inbox()
        # told of list changes, ended by a revocation or with its credential (as its POSTs would be refused)
        unfollow = self._lists.follow(self._policy.active, ctx.server_name, ctx.principal, inbox)
        try:
            await prepare(out, ctx.request)
            while True:
                # the parser hands out whole events, so between two writes we are always at a boundary
                if inbox.pending:
                    async with live.lock:
                        for event in inbox.take():
                            ctx.bytes_out += len(event)
                            await out.write(event)
                if inbox.closing:
                    ctx.notes["stream_error"] = "credential_gone"
                    break
                try:
                    async with asyncio.timeout(keepalive) as timer:
                        inbox.timer = timer
                        chunk = await resp.content.readany()
                except TimeoutError:
                    if inbox.pending or inbox.closing:
                        continue  # woken by the inbox: handled above
                    async with live.lock:
                        await out.write(KEEPALIVE_COMMENT)
                    continue
                finally:
                    inbox.timer = None
                if not chunk:
                    rest = parser.leftover()
                    if rest:
                        async with live.lock:
                            await out.write(rest)
                    break
                for ev in parser.feed(chunk):
                    raw = ev.raw
                    if ev.event == "endpoint":
                        if endpoint_seen:
                            continue  # the session has its endpoint; a second one would only mislead the client
                        endpoint_seen = True
                        token, reservation[0] = reservation[0], None
                        try:
                            raw, session_id = await self._bind(ctx, upstream_url, ev, self._public_url, token)
                        except EndpointRefused as exc:
                            if token is not None:
                                await release_session(ctx, self._sessions, token)
                            await self._refuse_endpoint(ctx, live, str(exc))
                            refused = True
                            break
                        if session_id is not None:
                            ctx.session_id = session_id
                            streams.add(ctx.server_name, session_id, live)
                    elif ev.data:
                        raw = await self._answer(ctx, live, lists, ev)
                    async with live.lock:
                        await out.write(raw)
                    ctx.bytes_out += len(raw)
                if refused:
                    break  # nothing of this upstream's stream goes further
            await out.write_eof()
        except H1BodyError as exc:
            log.warning("upstream legacy stream ended abnormally", request_id=ctx.request_id, error=type(exc).__name__)
            ctx.notes["stream_error"] = type(exc).__name__
        except ConnectionResetError:
            ctx.notes["stream_error"] = "client_gone"
        except GatewayError as err:
            # the upstream named a session that cannot be bound to this caller (invalid, or someone else's): end the
            # stream before the client learns the endpoint; the answer's head is already sent, so no error body
            log.warning(
                "legacy stream ended: its session could not be bound", server=ctx.server_name, reason=err.reason
            )
            ctx.notes["stream_error"] = err.reason
        finally:
            unfollow()
            resp.close()
            if reservation[0] is not None:  # the stream ended before it named its session
                await release_session(ctx, self._sessions, reservation[0])
            if session_id is not None:
                streams.remove(ctx.server_name, session_id, live)
                # the upstream session dies with its stream; forget the binding on every replica
                await self._sessions.delete(ctx.server_name, session_id)
        return out

    async def _bind(
        self, ctx: RequestContext, upstream_url: str, ev: SseEvent, public_url: str, reservation: str | None
    ) -> tuple[bytes, str | None]:
        assert ctx.principal is not None
        prefix = f"/mcp/{ctx.server_name}"
        if ctx.server is not None and ctx.server.transport == "stdio":
            rewritten = stdio_endpoint(ev.data or "", prefix, public_url)
        else:
            rewritten = rewrite_endpoint(ev.data or "", upstream_url, prefix, public_url)
        if rewritten.session_id is None:
            log.warning("legacy endpoint without a session id; POSTs cannot be routed", server=ctx.server_name)
            if reservation is not None:
                await release_session(ctx, self._sessions, reservation)
        else:
            p = ctx.principal
            binding = SessionBinding(p.binding_id, ctx.server_name, upstream_url, rewritten.upstream, p.tenant)
            # raises when the id is invalid or someone else's: the stream ends before the client learns the endpoint
            await bind_new_session(ctx, self._sessions, rewritten.session_id, binding, reservation)
        raw = encode_event(data=rewritten.client, event="endpoint", id=ev.id, retry=ev.retry)
        return raw, rewritten.session_id

    async def _refuse_endpoint(self, ctx: RequestContext, live: LiveStream, detail: str) -> None:
        """The upstream named an endpoint off its own origin: no binding, and the stream ends with an `error` event
        (its headers are out, so no HTTP error is possible). Logged, counted and audited (502, stage forward)."""
        err = UpstreamProtocolError(
            "upstream named a message endpoint on another origin; the stream is closed",
            reason="upstream_endpoint_refused",
            stage="forward",
            data={"detail": detail},
        )
        log.warning("legacy endpoint refused", server=ctx.server_name, request_id=ctx.request_id, detail=detail)
        self._transport_metrics.legacy_endpoint_refused.labels(ctx.server_name).inc()
        ctx.refused_stage, ctx.refused_reason, ctx.rpc_error_code = err.stage, err.reason, err.code
        ctx.http_status = 502
        ctx.notes["stream_error"] = err.reason
        await live.inject(encode_event(data=orjson.dumps(error_payload(err, None)).decode(), event="error"))

    async def _answer(self, ctx: RequestContext, live: LiveStream, lists: CallerLists, ev: SseEvent) -> bytes:
        """A message on the stream, filtered for the stream's principal (transports/lists.py); nothing when it may
        hold a tools list but is not JSON."""
        assert ev.data is not None
        data = await lists.pass_on(ev.data, live.in_flight)
        if data is ev.data:
            return ev.raw
        if data is None:
            ctx.notes["dropped_unfilterable"] = True
            log.warning("upstream event that may hold a tools list is not JSON; dropped", server=ctx.server_name)
            return b""
        return encode_event(data=data, event=ev.event, id=ev.id, retry=ev.retry)

    # ------------------------------------------------------------------------------------------------ POST

    async def _post(self, request: web.Request, active: Active) -> web.StreamResponse:
        name = request.match_info["server"]
        server = active.snapshot.servers.get(name)
        ctx = self._new_context(request, active.snapshot, name, server, "sse")
        ctx.session_id = session_id_of(request.query_string)
        chain: Chain = active.chain
        metrics = self._metrics
        metrics.request_started()
        try:
            authn_first = authn_before_body(request, server, self._max_body_bytes)
            try:
                return await chain.run(ctx, self._forward_post, prepare=self._prepare_post, authn_first=authn_first)
            except GatewayError as err:
                await self._inject_refusal(ctx, err)
                return render(ctx, server, err)
        finally:
            metrics.request_finished()

    async def _prepare_post(self, ctx: RequestContext) -> None:
        await read_and_parse(ctx, self._max_body_bytes, LEGACY_VERSION)
        if ctx.session_id is None:
            raise InvalidRequest("legacy SSE POST needs the session_id of its endpoint", reason="missing_session")

    async def _forward_post(self, ctx: RequestContext) -> web.StreamResponse:
        server = ctx.server
        assert server is not None and ctx.request is not None and ctx.session_id is not None
        # after authn and authz, so that neither refusal tells an anonymous caller the route exists (review)
        presented = presented_session_id(ctx.request.headers)
        if not valid_session_id(ctx.session_id):
            raise SessionNotFound(
                "unknown or expired session; open a new stream", reason="session_not_found", stage=SESSION_STAGE
            )
        binding = await bound_session(ctx, self._sessions)
        if presented is not None and presented != ctx.session_id:
            await check_presented(ctx, self._sessions, presented)
        if binding.endpoint is None:
            raise SessionNotFound(
                "not a legacy SSE session; open the event stream first", reason="session_not_found", stage=SESSION_STAGE
            )
        live = self._live_stream_of(ctx)
        # the answer comes down the stream, which ends the id's flight; with the stream on another replica the check
        # is that replica's to miss (the stream filters lists all the same)
        claimed = live.in_flight.claim(ctx.envelopes) if live is not None else []
        opener = self._stdio if server.transport == "stdio" else self._forwarder
        try:
            resp = await opener.open(
                ctx,
                server,
                binding.endpoint,
                "POST",
                extra_headers=self._credentials(ctx.snapshot, ctx.server_name),
            )
        except BaseException:
            if live is not None:
                live.in_flight.release_keys(claimed)
            raise
        if resp.status == 404:
            await self._sessions.delete(ctx.server_name, ctx.session_id, binding)
        if live is not None and not 200 <= resp.status < 300:
            live.in_flight.release_keys(claimed)  # refused upstream: no answer will come down the stream
        return await self._forwarder.relay(ctx, ctx.request, resp)

    def _live_stream_of(self, ctx: RequestContext) -> LiveStream | None:
        if ctx.session_id is None or ctx.principal is None:
            return None
        live = self._live_streams.get(ctx.server_name, ctx.session_id)
        # only the session's own principal may have anything written on its stream
        if live is None or live.principal != ctx.principal.binding_id:
            return None
        return live

    async def _inject_refusal(self, ctx: RequestContext, err: GatewayError) -> None:
        rpc_id = ctx.rpc_id if ctx.message is not None else None
        if rpc_id is None:  # notifications and responses are never answered
            return
        if err.reason == "duplicate_request_id":
            return  # on the stream this id's answer belongs to the request already in flight; the POST has the error
        if ctx.session_id is None or ctx.principal is None:
            return
        event = encode_event(data=orjson.dumps(error_payload(err, rpc_id)).decode(), event="message")
        live = self._live_stream_of(ctx)
        if live is not None:
            delivered = await live.inject(event)
        elif self._bus is not None:
            # the stream may be held by another replica; it checks the principal before writing
            bus = self._bus
            delivered = await bus.publish(ctx.server_name, ctx.session_id, ctx.principal.binding_id, event)
        else:
            return
        if delivered:
            self._transport_metrics.legacy_injected_errors.labels(ctx.server_name).inc()
