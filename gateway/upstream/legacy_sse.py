"""Legacy HTTP+SSE (2024-11-05) pieces that need no request: the `endpoint` rewrite and the live-stream registry.

The upstream's first event names the URL its POSTs go to (`/messages/?session_id=X`, `/message?sessionId=X`, or an
absolute URL). Clients resolve it against the SSE URL and refuse another origin, so the gateway rewrites it onto its
own route prefix, keeping path and query, and remembers the upstream URL for the session's POSTs.

The gateway refuses another origin too: it POSTs the clients' bodies there with the route's upstream credential, so
an endpoint elsewhere (another host, port or scheme, or other userinfo) would make an upstream point the gateway at
any address it can reach (SSRF). Such an endpoint, or one that is not a plain URL, raises `EndpointRefused`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urljoin, urlsplit

from aiohttp import web

from gateway.net.h1client import parse_url
from gateway.transports.inflight import InFlightIds

SESSION_QUERY_KEYS = ("session_id", "sessionId")
# longer than any URL an upstream means; the endpoint is stored with the session binding (Redis too)
MAX_ENDPOINT_CHARS = 2048


class EndpointRefused(ValueError):
    """The upstream named an endpoint the gateway will not POST to; the message is safe to log (no userinfo)."""


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


def same_origin_endpoint(data: str, upstream_sse_url: str) -> str:
    """The absolute URL of the endpoint `data`, resolved against the upstream's SSE URL; EndpointRefused unless it is
    on the same origin (scheme, host and port equal, default ports counted) with the same userinfo, if any."""
    text = data.strip()
    if not text or len(text) > MAX_ENDPOINT_CHARS:
        raise EndpointRefused(f"endpoint is empty or longer than {MAX_ENDPOINT_CHARS} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise EndpointRefused("endpoint holds whitespace or control characters")
    upstream = urljoin(upstream_sse_url, text)
    base, target = urlsplit(upstream_sse_url), urlsplit(upstream)
    try:
        # the forwarder's own reading of a URL (h1client.parse_url): http(s) only, default ports filled in
        want, got = parse_url(upstream_sse_url).origin, parse_url(upstream).origin
    except ValueError:
        raise EndpointRefused("endpoint is not an http(s) URL with a valid port") from None
    if got != want:
        raise EndpointRefused(f"endpoint is on another origin ({got[:300]})")
    if target.username is not None and (target.username, target.password) != (base.username, base.password):
        raise EndpointRefused("endpoint names credentials of its own")
    return upstream


def rewrite_endpoint(data: str, upstream_sse_url: str, route_prefix: str, public_url: str) -> RewrittenEndpoint:
    """Map the upstream's endpoint onto `route_prefix` (e.g. `/mcp/srv`), keeping path and query.

    A relative endpoint stays relative (origin-relative path, so it resolves against whatever origin the client
    used); an absolute one becomes an absolute URL on the gateway's public URL, as the upstream meant it. An
    endpoint off the upstream's origin raises EndpointRefused (see the module doc).
    """
    upstream = same_origin_endpoint(data, upstream_sse_url)
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
    # ids of the session's requests POSTed through this process whose answer has not come down the stream yet
    in_flight: InFlightIds = field(default_factory=InFlightIds)

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
