"""The forward path on aiohttp's ClientSession: `upstream.client: aiohttp` (the lean client is the default).

A fallback for the lean client (gateway/net/h1client.py), not a second design: same pools per origin and kind
(request/response and streams, gateway/upstream/pool.py), same timeouts, same typed failures, so the forwarder, the
retry layer, the breaker and the audit see no difference. It costs more CPU per request (docs/benchmark.md) and
exists so that a bug in the hand-written client can be ruled out, or worked around, by a configuration change.

How the lean client's timeouts map onto aiohttp:
  * pool wait + connect: aiohttp's `connect` timeout (which covers both), `sock_connect` for the connect alone; a
    request still queued for a connection when it fires is a pool timeout (`H1PoolTimeout`), else a connect one;
  * first byte: a deadline set when the request's headers are written (trace signal), so it does not count the
    pool wait; it fires as `H1ResponseTimeout`;
  * idle: measured from the last body bytes received, as in the lean client, so a relay that cancels its read
    every keep-alive period does not restart the upstream's clock; it fires as `H1BodyTimeout`.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiohttp
from multidict import CIMultiDict

from gateway.net.h1client import (
    H1BodyError,
    H1BodyTimeout,
    H1ConnectError,
    H1ConnectTimeout,
    H1Disconnected,
    H1PoolTimeout,
    H1ProtocolError,
    H1ResponseTimeout,
)
from gateway.policy.resilience import PoolPolicy
from gateway.upstream.pool import UpstreamPools


class _Trace:
    """One request's progress, as aiohttp's trace signals report it."""

    __slots__ = ("deadline", "first_byte", "queued", "sent")

    def __init__(self, first_byte: float) -> None:
        self.first_byte = first_byte
        self.queued = False  # waiting for a pooled connection
        self.sent = False  # the request's headers were written
        self.deadline: asyncio.Timeout | None = None


async def _queued_start(_: aiohttp.ClientSession, ctx: SimpleNamespace, __: Any) -> None:
    ctx.trace_request_ctx.queued = True


async def _queued_end(_: aiohttp.ClientSession, ctx: SimpleNamespace, __: Any) -> None:
    ctx.trace_request_ctx.queued = False


async def _headers_sent(_: aiohttp.ClientSession, ctx: SimpleNamespace, __: Any) -> None:
    trace: _Trace = ctx.trace_request_ctx
    trace.sent = True
    if trace.deadline is not None:
        trace.deadline.reschedule(asyncio.get_running_loop().time() + trace.first_byte)


def _trace_config() -> aiohttp.TraceConfig:
    config = aiohttp.TraceConfig()
    config.on_connection_queued_start.append(_queued_start)
    config.on_connection_queued_end.append(_queued_end)
    config.on_request_headers_sent.append(_headers_sent)
    return config


class AiohttpBody:
    """aiohttp's body reader with the lean client's failure types and idle clock."""

    __slots__ = ("_ended", "_idle", "_last", "_loop", "_reader")

    def __init__(self, reader: aiohttp.StreamReader, idle: float) -> None:
        self._reader = reader
        self._loop = asyncio.get_running_loop()
        self._idle = idle
        self._last = self._loop.time()
        self._ended = False

    def __aiter__(self) -> AiohttpBody:
        return self

    async def __anext__(self) -> bytes:
        data = await self.readany()
        if not data:
            raise StopAsyncIteration
        return data

    async def readany(self) -> bytes:
        if self._ended:
            return b""
        try:
            # nested inside a relay's keep-alive timer: only this deadline's expiry is an idle timeout here
            async with asyncio.timeout_at(self._last + self._idle):
                data = await self._reader.readany()
        except TimeoutError:
            raise H1BodyTimeout("upstream sent nothing within the idle timeout") from None
        except (aiohttp.ClientError, OSError) as exc:
            if self._ended:
                return b""
            raise H1BodyError(f"upstream answer broke off: {type(exc).__name__}") from None
        if data:
            self._last = self._loop.time()
        return data

    def end(self) -> None:
        self._ended = True
        self._reader.feed_eof()  # wakes a pending read, which then sees the end


class AiohttpResponse:
    """An aiohttp answer in the shape of gateway/upstream/response.py."""

    __slots__ = ("_resp", "content", "content_length", "headers", "reason", "status")

    def __init__(self, resp: aiohttp.ClientResponse, idle: float) -> None:
        self._resp = resp
        self.status = resp.status
        self.reason = resp.reason or ""
        self.headers = resp.headers
        self.content_length = resp.content_length
        self.content = AiohttpBody(resp.content, idle)

    def close(self) -> None:
        # release keeps the connection only if the body was read to its end (aiohttp's should_close)
        self._resp.release()

    def end(self) -> None:
        self.content.end()
        self._resp.close()


class AiohttpUpstream:
    """Sends the forward path's requests through per-origin aiohttp sessions kept by UpstreamPools."""

    def __init__(self, pools: UpstreamPools) -> None:
        self._pools = pools
        self._trace = [_trace_config()]

    async def request(
        self,
        method: str,
        url: str,
        headers: CIMultiDict[str],
        body: bytes | None,
        *,
        pool: PoolPolicy,
        stream: bool,
        connect_timeout: float,
        wait_timeout: float,
        first_byte: float,
        idle: float,
    ) -> AiohttpResponse:
        """Send the request and return the answer once its headers are in (failures typed as the lean client's)."""
        session = self._pools.session(
            url,
            pool,
            kind="streams" if stream else "forward",
            limit=pool.max_streams if stream else pool.max_connections,
            trace_configs=self._trace,
        )
        timeout = aiohttp.ClientTimeout(
            total=None, connect=wait_timeout + connect_timeout, sock_connect=connect_timeout, sock_read=None
        )
        trace = _Trace(first_byte)
        try:
            async with asyncio.timeout(None) as deadline:
                trace.deadline = deadline
                resp = await session.request(
                    method,
                    url,
                    headers=headers,
                    data=body,
                    timeout=timeout,
                    allow_redirects=False,
                    trace_request_ctx=trace,
                )
        except aiohttp.ConnectionTimeoutError:
            if trace.queued:
                raise H1PoolTimeout("no free upstream connection within the pool's max wait") from None
            raise H1ConnectTimeout(f"connect to {_origin(url)} timed out") from None
        except TimeoutError:
            raise H1ResponseTimeout("upstream sent no answer headers in time") from None
        except aiohttp.ClientConnectorError as exc:
            raise H1ConnectError(f"connect to {_origin(url)} failed: {exc.os_error}") from None
        except aiohttp.ClientResponseError as exc:
            raise H1ProtocolError(f"invalid HTTP answer: {exc.message}") from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            if not trace.sent:
                raise H1Disconnected(
                    "connection closed before the request was written", before_any_byte=True, written=False
                ) from None
            raise H1Disconnected(
                f"connection broke before the answer: {type(exc).__name__}", before_any_byte=True
            ) from None
        except aiohttp.ClientError as exc:
            raise H1ConnectError(f"request to {_origin(url)} failed: {type(exc).__name__}") from None
        return AiohttpResponse(resp, idle)


def _origin(url: str) -> str:
    # for messages only; the URL's userinfo (credentials) must never reach a log
    parts = url.split("://", 1)
    rest = parts[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{parts[0]}://{rest}" if len(parts) == 2 else rest
