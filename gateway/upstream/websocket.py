"""The upstream side of a WebSocket route: one socket per client socket, subprotocol `mcp`, close-code mapping.

MCP over WebSocket is a custom transport (never in the spec): subprotocol `mcp`, one JSON-RPC message per text
frame, `initialize` in-band, socket = session. The client's credentials and WebSocket handshake headers never go
upstream; the upstream gets the gateway's own credential.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import aiohttp
from multidict import CIMultiDict

from gateway.context import RequestContext, UpstreamOutcome
from gateway.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from gateway.policy.servers import ServerPolicy
from gateway.upstream.headers import set_session_header, upstream_request_headers
from gateway.upstream.pool import UpstreamPools

SUBPROTOCOL = "mcp"
# largest frame accepted from an upstream (a client's frames are capped by the route's body limit)
MAX_UPSTREAM_FRAME = 64 * 1024 * 1024
_NOT_SENDABLE = frozenset({1005, 1006, 1015})  # reserved: only ever reported, never sent in a close frame


def sendable_close_code(code: int | None, *, abnormal: int) -> int:
    """The code to send on the other socket for a close we saw: the peer's own code when it may be sent,
    1000 when the peer sent none, `abnormal` when the connection just died."""
    if code is None or code == 1005:
        return 1000
    if code in _NOT_SENDABLE or not (1000 <= code <= 4999):
        return abnormal
    return code


def handshake_headers(client_headers: object) -> list[tuple[str, str]]:
    """Client headers minus the WebSocket handshake ones (aiohttp makes its own for the upstream handshake)."""
    items = getattr(client_headers, "items", None)
    if items is None:
        return []
    return [(k, v) for k, v in items() if not k.lower().startswith("sec-websocket-")]


async def connect_upstream(
    ctx: RequestContext,
    pools: UpstreamPools,
    server: ServerPolicy,
    url: str,
    *,
    heartbeat: float,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> aiohttp.ClientWebSocketResponse:
    """Open the upstream socket (subprotocol `mcp`); failures are reported to the breaker and raised as 502/504."""
    session = pools.session(url, server.pool)
    headers = upstream_request_headers(
        CIMultiDict(handshake_headers(ctx.headers)),
        request_id=ctx.request_id,
        client_ip=ctx.client_ip,
        proto=ctx.request.scheme if ctx.request is not None else "http",
        extra=extra_headers,
    )
    set_session_header(headers, None)  # the socket is the session: a client's Mcp-Session-Id never crosses
    if ctx.trace is not None:
        ctx.trace.attempt(ctx, headers, url, "GET")
    t = server.timeouts
    start = time.perf_counter()
    try:
        async with asyncio.timeout(t.connect + t.first_byte):
            ws = await session.ws_connect(
                url,
                protocols=(SUBPROTOCOL,),
                headers=headers,
                heartbeat=heartbeat,
                autoclose=False,
                autoping=True,
                max_msg_size=MAX_UPSTREAM_FRAME,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=t.connect),
                compress=0,
            )
    except TimeoutError:
        latency = time.perf_counter() - start
        ctx.upstream_latency = latency
        ctx.report_outcome(UpstreamOutcome(url, None, "timeout", latency))
        raise UpstreamTimeout("upstream did not accept the WebSocket in time", reason="upstream_timeout") from None
    except aiohttp.WSServerHandshakeError as exc:
        latency = time.perf_counter() - start
        ctx.upstream_latency = latency
        ctx.upstream_status = exc.status
        ctx.report_outcome(UpstreamOutcome(url, exc.status, None, latency))
        raise UpstreamProtocolError(
            "upstream refused the WebSocket upgrade",
            reason="upstream_ws_refused",
            data={"upstreamStatus": exc.status},
        ) from None
    except (aiohttp.ClientConnectorError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
        latency = time.perf_counter() - start
        ctx.upstream_latency = latency
        kind = "connect" if isinstance(exc, aiohttp.ClientConnectorError) else "reset"
        ctx.report_outcome(UpstreamOutcome(url, None, kind, latency))
        raise UpstreamUnavailable(
            "upstream is unreachable", reason="upstream_unreachable", data={"detail": type(exc).__name__}
        ) from None
    latency = time.perf_counter() - start
    ctx.upstream_latency = latency
    ctx.upstream_status = 101
    ctx.report_outcome(UpstreamOutcome(url, 101, None, latency))
    if ws.protocol != SUBPROTOCOL:
        await ws.close(code=1002)
        raise UpstreamProtocolError("upstream did not accept subprotocol 'mcp'", reason="upstream_ws_subprotocol")
    return ws
