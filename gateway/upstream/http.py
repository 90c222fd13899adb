"""The forward stage for HTTP transports: send the request upstream and stream the answer back.

Nothing is buffered on the plain path: chunks are written to the client as they arrive (`readany`, so there is no
line-length limit either). Only when a request carries a message transform (the caller's tools filter) is a JSON
answer read whole (bounded) or an SSE stream parsed event by event; every event and every message of an array goes
through it, whatever its event type or id (filters/lists.py). Idle SSE streams get `:` comments, but only between
events, so an event is never split.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import structlog
from aiohttp import web

from gateway.context import FORWARD_STAGE, RequestContext, UpstreamOutcome
from gateway.errors import (
    ConcurrencyLimited,
    GatewayError,
    UpstreamPoolExhausted,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.filters.lists import MARK_OVERLAP, Unfilterable, filter_bytes, filter_text, may_hold_list_bytes
from gateway.net.h1client import (
    H1BodyError,
    H1ConnectError,
    H1Disconnected,
    H1Error,
    H1PoolTimeout,
    H1ProtocolError,
    H1ResponseTimeout,
    build_request,
)
from gateway.policy.servers import ServerPolicy
from gateway.ratelimit.shares import ANONYMOUS_TENANT
from gateway.responder import AnyRequest, new_response, prepare
from gateway.settings import UpstreamClient
from gateway.upstream.aiohttp_client import AiohttpUpstream
from gateway.upstream.headers import client_response_headers, set_session_header, upstream_request_headers
from gateway.upstream.inbox import Inbox
from gateway.upstream.pool import UpstreamPools
from gateway.upstream.response import UpstreamResponse
from gateway.upstream.sse import SseParser, encode_event, ends_at_event_boundary
from gateway.upstream.streams import StreamBudget, StreamLease, StreamShareExceeded, is_stream

log = structlog.get_logger("gateway.upstream")

KEEPALIVE_COMMENT = b": keepalive\n\n"
MAX_TRANSFORM_BYTES = 32 * 1024 * 1024
# when a tenant refused its share of an upstream's streams should try again: streams end rarely, so not at once
STREAM_RETRY_AFTER = 5.0
# a refusal for fairness among tenants, like the concurrency caps: audited as "refused" by the limits stage, not as
# a failure of the forward step (it is decided here only because the upstream instance is known only here)
STREAM_SHARE_STAGE = "ratelimit"


class HttpForwarder:
    def __init__(self, pools: UpstreamPools, keepalive_seconds: float, client: UpstreamClient = "lean") -> None:
        self._pools = pools
        self._keepalive = keepalive_seconds
        # `upstream.client: aiohttp`: requests go through aiohttp sessions; None is the lean client (the default)
        self._aiohttp = AiohttpUpstream(pools) if client == "aiohttp" else None

    async def open(
        self,
        ctx: RequestContext,
        server: ServerPolicy,
        url: str,
        method: str,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> UpstreamResponse:
        """Send the request and wait for the answer's headers (pool wait, connect and first-byte timeouts).

        A stream (gateway/upstream/streams.py) goes over its origin's stream pool once that pool's budget admits
        it; its slot is given back when the request ends, or at once when no stream came of it."""
        lease: StreamLease | None = None
        stream = method == "GET" or (method == "POST" and is_stream(ctx))
        if stream:
            spool, endpoint = self._pools.streams(url, server.pool)
            lean = spool.h1
            lease = self._admit_stream(ctx, spool.budget)
        headers = upstream_request_headers(
            ctx.headers,
            request_id=ctx.request_id,
            client_ip=ctx.client_ip,
            proto=ctx.request.scheme if ctx.request is not None else "http",
            extra=extra_headers,
        )
        # Streamable HTTP routes by the session id; on legacy SSE the session is in the POST URL
        set_session_header(headers, ctx.session_id if ctx.transport == "streamable-http" else None)
        if ctx.trace is not None:
            # this attempt's span, and the upstream's `traceparent` naming it (the client's is replaced)
            ctx.trace.attempt(ctx, headers, url, method)
        body = ctx.body if method == "POST" else None
        plain = self._aiohttp
        t = server.timeouts
        start = time.perf_counter()
        resp: UpstreamResponse
        try:
            if plain is None:
                if not stream:
                    lean, endpoint = self._pools.h1(url, server.pool)
                resp = await lean.request(
                    method,
                    build_request(method, endpoint, headers, body),
                    connect_timeout=t.connect,
                    wait_timeout=server.pool.max_wait_seconds,
                    first_byte=t.first_byte,
                    idle=t.idle,
                )
            else:
                resp = await plain.request(
                    method,
                    url,
                    headers,
                    body,
                    pool=server.pool,
                    stream=stream,
                    connect_timeout=t.connect,
                    wait_timeout=server.pool.max_wait_seconds,
                    first_byte=t.first_byte,
                    idle=t.idle,
                )
        except BaseException as exc:
            if lease is not None:
                lease.release()
            if isinstance(exc, H1Error):
                err = self._failure(ctx, server, url, exc, start)
                if err is not None:
                    # named, so `compat_status_200: auto` treats it as the refusal of a message it is
                    # (gateway/transports/refusal_status.py), as the stdio forwarder's are
                    err.stage = err.stage or FORWARD_STAGE
                    raise err from None
            raise
        latency = time.perf_counter() - start
        ctx.upstream_latency = latency
        ctx.upstream_status = resp.status
        ctx.report_outcome(UpstreamOutcome(url, resp.status, None, latency))
        if lease is not None:
            self._bind_stream(ctx, lease, resp)
        return resp

    def prewarm_stream(self, server: ServerPolicy, url: str) -> None:
        """Have an idle connection ready in `url`'s stream pool (a session was just created there): its GET stream,
        which the client opens next, then does not wait for a connect (issue 16: a GET slower than the POST that
        follows it lost the server-to-client request the POST caused). One idle connection per pool at most."""
        spool, _ = self._pools.streams(url, server.pool)
        spool.h1.prewarm(server.timeouts.connect)

    def _failure(
        self, ctx: RequestContext, server: ServerPolicy, url: str, exc: H1Error, start: float
    ) -> GatewayError | None:
        """The outcome the breaker learns and the error the client gets for a request that got no answer."""
        if isinstance(exc, H1PoolTimeout):
            # never sent, but the cap that was hit is the gateway's own: the upstream did nothing wrong, so its
            # breaker must not count it (kind "pool", not "connect"); the client gets a 503 and Retry-After
            self._failed(ctx, url, "pool", start)
            return UpstreamPoolExhausted(
                "every connection to the upstream stayed busy; try again shortly",
                retry_after=server.pool.max_wait_seconds,  # Retry-After is at least 1 s (RetryableRefusal)
                data={"detail": type(exc).__name__},
            )
        if isinstance(exc, H1ConnectError):
            # Nothing was sent (refused, DNS, connect timeout): never delivered, so a retry is safe for any method,
            # and the upstream did not time out on us (no 504).
            self._failed(ctx, url, "connect", start)
            return UpstreamUnavailable(
                "upstream is unreachable", reason="upstream_unreachable", data={"detail": type(exc).__name__}
            )
        if isinstance(exc, H1Disconnected):
            self._failed(ctx, url, "reset", start)
            return UpstreamUnavailable(
                "upstream is unreachable", reason="upstream_unreachable", data={"detail": type(exc).__name__}
            )
        if isinstance(exc, H1ResponseTimeout):
            self._failed(ctx, url, "timeout", start)
            return UpstreamTimeout("upstream did not answer in time", reason="upstream_timeout")
        if isinstance(exc, H1ProtocolError):
            self._failed(ctx, url, "protocol", start)
            return UpstreamProtocolError(
                "upstream sent an invalid answer",
                reason="upstream_protocol_error",
                data={"detail": str(exc)},
            )
        return None

    @staticmethod
    def _admit_stream(ctx: RequestContext, budget: StreamBudget) -> StreamLease:
        """A slot of the origin's stream budget for the caller's tenant, or the refusal of a tenant at its share."""
        try:
            # anonymous callers of each route are a tenant of their own here, as for the session and stream caps
            return budget.admit(ctx.tenant or f"{ANONYMOUS_TENANT}:{ctx.server_name}")
        except StreamShareExceeded as exc:
            # for the audit; the client is not told how many tenants share the upstream
            ctx.notes["stream_share"] = {"share": exc.share, "held": exc.held}
            raise ConcurrencyLimited(
                "the upstream's streams are all in use and your tenant holds its fair share of them; "
                "close a stream or try again later",
                reason="stream_share_exceeded",
                stage=STREAM_SHARE_STAGE,
                retry_after=STREAM_RETRY_AFTER,
                data={"limit": "upstream_streams"},
            ) from None

    @staticmethod
    def _bind_stream(ctx: RequestContext, lease: StreamLease, resp: UpstreamResponse) -> None:
        ctx.releases.append(lease.release)
        if resp.status != 200 or not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            return  # an answer (an error, a 405), not a stream: it ends by itself and is never cut short
        if lease.evicted:
            # its slot went to a tenant under its share while this stream was still opening
            resp.close()
            ctx.notes["stream_ended"] = "stream_share"
            raise ConcurrencyLimited(
                "the upstream's streams are all in use and your tenant holds more than its fair share of them",
                reason="stream_share_exceeded",
                stage=STREAM_SHARE_STAGE,
                retry_after=STREAM_RETRY_AFTER,
                data={"limit": "upstream_streams"},
            )

        def end() -> None:
            # recorded in the audit record of this stream's request: the gateway, not the upstream, ended it
            ctx.notes["stream_ended"] = "stream_share"
            resp.end()

        lease.bind(end)

    @staticmethod
    def _failed(ctx: RequestContext, url: str, kind: str, start: float) -> None:
        latency = time.perf_counter() - start
        ctx.upstream_latency = latency
        ctx.report_outcome(UpstreamOutcome(url, None, kind, latency))

    async def relay(
        self,
        ctx: RequestContext,
        request: AnyRequest,
        resp: UpstreamResponse,
        extra_headers: dict[str, str] | None = None,
        inbox: Inbox | None = None,
    ) -> web.StreamResponse:
        """Stream the upstream answer to the client. Closes the upstream response on any exit. An event stream
        also carries what the gateway posts to `inbox`, between the upstream's events."""
        out: web.StreamResponse | None = None
        try:
            headers = client_response_headers(resp.headers)
            headers.update(ctx.response_headers)
            if extra_headers:
                headers.update(extra_headers)
            headers["X-Request-ID"] = ctx.request_id
            # lower-cased as clients do before they look (a `Text/Event-Stream` answer is still an event stream)
            ctype = resp.headers.get("Content-Type", "").lower()
            is_sse = ctype.startswith("text/event-stream")
            out = new_response(request, resp.status, resp.reason, headers)
            ctx.http_status = resp.status
            if is_sse:
                out.headers["Cache-Control"] = "no-cache, no-transform"
                out.headers["X-Accel-Buffering"] = "no"
                await prepare(out, request)
                if ctx.transform is not None:
                    await self._relay_sse_transformed(ctx, resp, out, inbox)
                else:
                    await self._relay_sse(ctx, resp, out, inbox)
            elif ctx.transform is not None and ctype.startswith("application/json"):
                if not await self._relay_json_filtered(ctx, request, resp, out):
                    return out  # cut: there is no end to write
            else:
                # Wait for the first body bytes before sending the status line (then stream the rest as it comes):
                # an upstream that dies between its headers and its body still gets the client a well-formed 502
                # instead of a cut connection. Event streams are exempt above: their headers must go out at once.
                first = await resp.content.readany()
                if resp.content_length is not None:
                    out.content_length = resp.content_length
                await prepare(out, request)
                if first:
                    ctx.bytes_out += len(first)
                    await out.write(first)
                async for chunk in resp.content:
                    ctx.bytes_out += len(chunk)
                    await out.write(chunk)
            await out.write_eof()
            return out
        except ConnectionResetError:
            # raised by our writes to the client: the client went away, the upstream did nothing wrong
            ctx.notes["client_disconnected"] = True
            if out is not None and out.prepared:
                return out
            raise
        except H1BodyError as exc:
            # the upstream broke off mid-answer (closed, reset, malformed, or silent past the idle timeout)
            log.warning("upstream stream ended abnormally", request_id=ctx.request_id, error=type(exc).__name__)
            ctx.notes["stream_error"] = type(exc).__name__
            if out is None or not out.prepared:
                raise UpstreamProtocolError(
                    "upstream broke off its answer", reason="upstream_stream_broken", stage=FORWARD_STAGE
                ) from None
            # The status line is out, so no error answer is possible. Cut the client's connection: ending the body
            # normally would pass a truncated answer off as complete, and with a Content-Length declared the
            # client would wait for the missing bytes until its own timeout.
            if request.transport is not None:
                request.transport.abort()
            ctx.http_status = 502
            return out
        finally:
            resp.close()

    @staticmethod
    async def _deliver(ctx: RequestContext, inbox: Inbox, out: web.StreamResponse) -> None:
        for event in inbox.take():
            ctx.bytes_out += len(event)
            await out.write(event)

    async def _relay_sse(
        self, ctx: RequestContext, resp: UpstreamResponse, out: web.StreamResponse, inbox: Inbox | None = None
    ) -> None:
        content = resp.content
        keepalive = self._keepalive
        tail = b"\n\n"  # a stream starts at an event boundary
        while True:
            if inbox is not None and ends_at_event_boundary(tail):
                if inbox.pending:
                    await self._deliver(ctx, inbox, out)
                if inbox.closing:
                    return
            try:
                async with asyncio.timeout(keepalive) as timer:
                    if inbox is not None:
                        inbox.timer = timer
                    chunk = await content.readany()
            except TimeoutError:
                if inbox is not None and (inbox.pending or inbox.closing):
                    continue  # woken by the inbox: what it holds is written above, at an event boundary
                if ends_at_event_boundary(tail):
                    await out.write(KEEPALIVE_COMMENT)
                continue
            finally:
                if inbox is not None:
                    inbox.timer = None
            if not chunk:
                return
            ctx.bytes_out += len(chunk)
            tail = (tail + chunk[-4:])[-4:]  # the last 4 bytes only: no copy of the whole chunk
            await out.write(chunk)

    async def _relay_sse_transformed(
        self, ctx: RequestContext, resp: UpstreamResponse, out: web.StreamResponse, inbox: Inbox | None = None
    ) -> None:
        parser = SseParser()
        content = resp.content
        while True:
            # the parser emits whole events, so between two reads the client's stream is at an event boundary
            if inbox is not None:
                if inbox.pending:
                    await self._deliver(ctx, inbox, out)
                if inbox.closing:
                    return
            try:
                async with asyncio.timeout(self._keepalive) as timer:
                    if inbox is not None:
                        inbox.timer = timer
                    chunk = await content.readany()
            except TimeoutError:
                if inbox is None or not (inbox.pending or inbox.closing):
                    await out.write(KEEPALIVE_COMMENT)
                continue
            finally:
                if inbox is not None:
                    inbox.timer = None
            if not chunk:
                rest = parser.leftover()
                if rest:
                    ctx.bytes_out += len(rest)
                    await out.write(rest)
                return
            transform = ctx.transform
            assert transform is not None
            for ev in parser.feed(chunk):
                raw = ev.raw
                # any event type: what a client makes of an odd event is its own affair, a tools list is ours
                if ev.data:
                    try:
                        data = filter_text(transform, ev.data)
                    except Unfilterable:
                        ctx.notes["dropped_unfilterable"] = True
                        log.warning("upstream event that may hold a tools list is not JSON; dropped")
                        continue
                    if data is not None:
                        raw = encode_event(data=data, event=ev.event, id=ev.id, retry=ev.retry)
                ctx.bytes_out += len(raw)
                await out.write(raw)

    async def _relay_json_filtered(
        self, ctx: RequestContext, request: AnyRequest, resp: UpstreamResponse, out: web.StreamResponse
    ) -> bool:
        """A JSON answer (one message or a batch array) through the caller's filter; False when it was cut.

        Read whole up to MAX_TRANSFORM_BYTES. A larger answer cannot be held; it is relayed as it comes only as long
        as nothing in it can be a tools list (a tool result may be that big, a list is not). If one could start
        after its head is out, the connection is cut: an unfiltered list never reaches the client."""
        transform = ctx.transform
        assert transform is not None
        buf = bytearray()
        content = resp.content
        async for chunk in content:
            buf += chunk
            if len(buf) > MAX_TRANSFORM_BYTES:
                break
        else:
            body = bytes(buf)
            try:
                body = filter_bytes(transform, body) or body
            except Unfilterable as exc:
                raise UpstreamProtocolError(
                    "upstream sent an invalid answer",
                    reason="upstream_protocol_error",
                    data={"detail": str(exc)},
                    stage=FORWARD_STAGE,
                ) from None
            out.content_length = len(body)
            await prepare(out, request)
            await out.write(body)
            ctx.bytes_out += len(body)
            return True
        if may_hold_list_bytes(buf):
            raise UpstreamProtocolError(
                "upstream answer too large to filter", reason="upstream_too_large", stage=FORWARD_STAGE
            )
        if resp.content_length is not None:
            out.content_length = resp.content_length
        await prepare(out, request)
        await out.write(buf)
        ctx.bytes_out += len(buf)
        tail = bytes(buf[-MARK_OVERLAP:])
        async for chunk in content:
            if may_hold_list_bytes(tail + chunk):
                log.warning("cut an answer too large to filter", request_id=ctx.request_id, server=ctx.server_name)
                ctx.notes["stream_error"] = "upstream_too_large"
                ctx.http_status = 502
                if request.transport is not None:
                    request.transport.abort()
                return False
            await out.write(chunk)
            ctx.bytes_out += len(chunk)
            tail = bytes(chunk[-MARK_OVERLAP:])
        return True
