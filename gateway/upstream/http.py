"""The forward stage for HTTP transports: send the request upstream and stream the answer back.

Nothing is buffered on the plain path: chunks are written to the client as they arrive (`readany`, so there is no
line-length limit either). Only when a request carries a message transform (e.g. a filtered `tools/list`) is a
JSON answer read whole (bounded) or an SSE stream parsed event by event. Idle SSE streams get `:` comments, but
only between events, so an event is never split.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway.context import RequestContext, UpstreamOutcome
from gateway.errors import UpstreamPoolExhausted, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from gateway.h1server import AnyRequest, new_response, prepare
from gateway.policy.servers import ServerPolicy
from gateway.upstream.h1client import (
    H1BodyError,
    H1ConnectError,
    H1Disconnected,
    H1PoolTimeout,
    H1ProtocolError,
    H1Response,
    H1ResponseTimeout,
    build_request,
)
from gateway.upstream.headers import client_response_headers, upstream_request_headers
from gateway.upstream.pool import UpstreamPools
from gateway.upstream.sse import SseParser, encode_event, ends_at_event_boundary

log = structlog.get_logger("gateway.upstream")

KEEPALIVE_COMMENT = b": keepalive\n\n"
MAX_TRANSFORM_BYTES = 32 * 1024 * 1024


class HttpForwarder:
    def __init__(self, pools: UpstreamPools, keepalive_seconds: float) -> None:
        self._pools = pools
        self._keepalive = keepalive_seconds

    async def open(
        self,
        ctx: RequestContext,
        server: ServerPolicy,
        url: str,
        method: str,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> H1Response:
        """Send the request and wait for the answer's headers (pool wait, connect and first-byte timeouts)."""
        pool, endpoint = self._pools.h1(url, server.pool)
        headers = upstream_request_headers(
            ctx.headers,
            request_id=ctx.request_id,
            client_ip=ctx.client_ip,
            proto=ctx.request.scheme if ctx.request is not None else "http",
            extra=extra_headers,
        )
        data = build_request(method, endpoint, headers, ctx.body if method == "POST" else None)
        t = server.timeouts
        start = time.perf_counter()
        try:
            resp = await pool.request(
                method,
                data,
                connect_timeout=t.connect,
                wait_timeout=server.pool.max_wait_seconds,
                first_byte=t.first_byte,
                idle=t.idle,
            )
        except H1PoolTimeout as exc:
            # never sent, like a connect failure below (so retryable on another instance); the cap that was hit is
            # the gateway's own, which the client is told with a 503 and Retry-After rather than a 502
            self._failed(ctx, url, "connect", start)
            raise UpstreamPoolExhausted(
                "every connection to the upstream stayed busy; try again shortly",
                retry_after=server.pool.max_wait_seconds,  # Retry-After is at least 1 s (RetryableRefusal)
                data={"detail": type(exc).__name__},
            ) from None
        except H1ConnectError as exc:
            # Nothing was sent (refused, DNS, connect timeout): never delivered, so a retry is safe for any method,
            # and the upstream did not time out on us (no 504).
            self._failed(ctx, url, "connect", start)
            raise UpstreamUnavailable(
                "upstream is unreachable", reason="upstream_unreachable", data={"detail": type(exc).__name__}
            ) from None
        except H1Disconnected as exc:
            self._failed(ctx, url, "reset", start)
            raise UpstreamUnavailable(
                "upstream is unreachable", reason="upstream_unreachable", data={"detail": type(exc).__name__}
            ) from None
        except H1ResponseTimeout:
            self._failed(ctx, url, "timeout", start)
            raise UpstreamTimeout("upstream did not answer in time", reason="upstream_timeout") from None
        except H1ProtocolError as exc:
            self._failed(ctx, url, "protocol", start)
            raise UpstreamProtocolError(
                "upstream sent an invalid answer",
                reason="upstream_protocol_error",
                data={"detail": str(exc)},
            ) from None
        latency = time.perf_counter() - start
        ctx.upstream_latency = latency
        ctx.upstream_status = resp.status
        ctx.report_outcome(UpstreamOutcome(url, resp.status, None, latency))
        return resp

    @staticmethod
    def _failed(ctx: RequestContext, url: str, kind: str, start: float) -> None:
        latency = time.perf_counter() - start
        ctx.upstream_latency = latency
        ctx.report_outcome(UpstreamOutcome(url, None, kind, latency))

    async def relay(
        self,
        ctx: RequestContext,
        request: AnyRequest,
        resp: H1Response,
        extra_headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        """Stream the upstream answer to the client. Closes the upstream response on any exit."""
        out: web.StreamResponse | None = None
        try:
            headers = client_response_headers(resp.headers)
            headers.update(ctx.response_headers)
            if extra_headers:
                headers.update(extra_headers)
            headers["X-Request-ID"] = ctx.request_id
            ctype = resp.headers.get("Content-Type", "")
            is_sse = ctype.startswith("text/event-stream")
            out = new_response(request, resp.status, resp.reason, headers)
            ctx.http_status = resp.status
            if is_sse:
                out.headers["Cache-Control"] = "no-cache, no-transform"
                out.headers["X-Accel-Buffering"] = "no"
                await prepare(out, request)
                if ctx.transform is not None:
                    await self._relay_sse_transformed(ctx, resp, out)
                else:
                    await self._relay_sse(ctx, resp, out)
            elif ctx.transform is not None and ctype.startswith("application/json") and resp.status == 200:
                body = await self._read_bounded(resp)
                body = self._transform_json(ctx, body)
                out.content_length = len(body)
                await prepare(out, request)
                await out.write(body)
                ctx.bytes_out += len(body)
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
                raise UpstreamProtocolError("upstream broke off its answer", reason="upstream_stream_broken") from None
            # The status line is out, so no error answer is possible. Cut the client's connection: ending the body
            # normally would pass a truncated answer off as complete, and with a Content-Length declared the
            # client would wait for the missing bytes until its own timeout.
            if request.transport is not None:
                request.transport.abort()
            ctx.http_status = 502
            return out
        finally:
            resp.close()

    async def _relay_sse(self, ctx: RequestContext, resp: H1Response, out: web.StreamResponse) -> None:
        content = resp.content
        keepalive = self._keepalive
        tail = b"\n\n"  # a stream starts at an event boundary
        while True:
            try:
                async with asyncio.timeout(keepalive):
                    chunk = await content.readany()
            except TimeoutError:
                if ends_at_event_boundary(tail):
                    await out.write(KEEPALIVE_COMMENT)
                continue
            if not chunk:
                return
            ctx.bytes_out += len(chunk)
            tail = (tail + chunk)[-4:]
            await out.write(chunk)

    async def _relay_sse_transformed(self, ctx: RequestContext, resp: H1Response, out: web.StreamResponse) -> None:
        parser = SseParser()
        content = resp.content
        while True:
            try:
                async with asyncio.timeout(self._keepalive):
                    chunk = await content.readany()
            except TimeoutError:
                await out.write(KEEPALIVE_COMMENT)  # the parser emits whole events, so we are at a boundary
                continue
            if not chunk:
                rest = parser.leftover()
                if rest:
                    ctx.bytes_out += len(rest)
                    await out.write(rest)
                return
            for ev in parser.feed(chunk):
                raw = ev.raw
                if ev.is_message and ev.data:
                    raw = self._transform_event(ctx, ev.data, ev.id, ev.event, ev.retry, raw)
                ctx.bytes_out += len(raw)
                await out.write(raw)

    def _transform_event(
        self,
        ctx: RequestContext,
        data: str,
        id_: str | None,
        event: str | None,
        retry: str | None,
        raw: bytes,
    ) -> bytes:
        assert ctx.transform is not None
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            return raw
        if not isinstance(msg, dict):
            return raw
        new = ctx.transform(msg)
        if new is msg:
            return raw
        return encode_event(data=orjson.dumps(new).decode(), event=event, id=id_, retry=retry)

    @staticmethod
    async def _read_bounded(resp: H1Response) -> bytes:
        buf = bytearray()
        async for chunk in resp.content:
            buf += chunk
            if len(buf) > MAX_TRANSFORM_BYTES:
                raise UpstreamProtocolError("upstream answer too large to filter", reason="upstream_too_large")
        return bytes(buf)

    @staticmethod
    def _transform_json(ctx: RequestContext, body: bytes) -> bytes:
        assert ctx.transform is not None
        try:
            msg: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        if isinstance(msg, dict):
            new = ctx.transform(msg)
            return body if new is msg else orjson.dumps(new)
        if isinstance(msg, list):
            return orjson.dumps([ctx.transform(m) if isinstance(m, dict) else m for m in msg])
        return body
