"""Legacy HTTP+SSE (2024-11-05) pieces that need no request: the `endpoint` rewrite and the live-stream registry.

The upstream's first event names the URL its POSTs go to (`/messages/?session_id=X`, `/message?sessionId=X`, or an
absolute URL). Clients resolve it against the SSE URL and refuse another origin, so the gateway rewrites it onto its
own route prefix, keeping path and query, and remembers the upstream URL for the session's POSTs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

from aiohttp import web

from gateway.jsonrpc import JsonRpcId

SESSION_QUERY_KEYS = ("session_id", "sessionId")
MAX_PENDING = 1024

Transform = Callable[[dict[str, Any]], dict[str, Any]]


class BoundedPending(dict[JsonRpcId, Transform]):
    """A dict that forgets its oldest entry past `cap` (answers that never come must not pile up)."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self._cap = cap

    def __setitem__(self, key: JsonRpcId, value: Transform) -> None:
        if key not in self and len(self) >= self._cap:
            del self[next(iter(self))]
        super().__setitem__(key, value)


@dataclass(frozen=True, slots=True)
class RewrittenEndpoint:
    client: str  # what the client is told to POST to
    upstream: str  # absolute upstream URL the gateway POSTs to
    session_id: str | None


def session_id_of(query: str) -> str | None:
    """The session id from an endpoint query (PY SDK `session_id`, TS SDK `sessionId`)."""
    params = parse_qs(query, keep_blank_values=False)
    for key in SESSION_QUERY_KEYS:
        values = params.get(key)
        if values and values[0]:
            return values[0]
    return None


def rewrite_endpoint(data: str, upstream_sse_url: str, route_prefix: str, public_url: str) -> RewrittenEndpoint:
    """Map the upstream's endpoint onto `route_prefix` (e.g. `/mcp/srv`), keeping path and query.

    A relative endpoint stays relative (origin-relative path, so it resolves against whatever origin the client
    used); an absolute one becomes an absolute URL on the gateway's public URL, as the upstream meant it.
    """
    upstream = urljoin(upstream_sse_url, data.strip())
    parts = urlsplit(upstream)
    public = urlsplit(public_url)
    base_path = public.path.rstrip("/")
    path = f"{base_path}{route_prefix}{parts.path or '/'}"
    if parts.query:
        path = f"{path}?{parts.query}"
    absolute = bool(urlsplit(data.strip()).scheme)
    client = f"{public.scheme}://{public.netloc}{path}" if absolute else path
    return RewrittenEndpoint(client=client, upstream=upstream, session_id=session_id_of(parts.query))


@dataclass(slots=True)
class LiveStream:
    """The client side of one legacy SSE stream held by this process. Writers take `lock` and write whole events,
    so the upstream relay and an injected error never interleave inside an event."""

    principal: str
    out: web.StreamResponse
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # request id -> transform of that request's answer (e.g. a filtered tools/list), which arrives on this stream
    pending: BoundedPending = field(default_factory=lambda: BoundedPending(MAX_PENDING))

    async def inject(self, event: bytes) -> bool:
        try:
            async with self.lock:
                await self.out.write(event)
        except (ConnectionError, RuntimeError):
            return False
        return True


class LiveStreams:
    """(server, session id) -> the stream this process relays for it. In-process on purpose: only the process
    holding the client's GET can write to it; another replica's refusal is answered on the POST alone."""

    def __init__(self) -> None:
        self._streams: dict[tuple[str, str], LiveStream] = {}

    def add(self, server: str, session_id: str, stream: LiveStream) -> None:
        self._streams[(server, session_id)] = stream

    def remove(self, server: str, session_id: str, stream: LiveStream) -> None:
        if self._streams.get((server, session_id)) is stream:
            del self._streams[(server, session_id)]

    def get(self, server: str, session_id: str) -> LiveStream | None:
        return self._streams.get((server, session_id))

    def __len__(self) -> int:
        return len(self._streams)


LIVE_STREAMS: web.AppKey[LiveStreams] = web.AppKey("legacy_live_streams", LiveStreams)
