"""The `endpoint` of a legacy HTTP+SSE client's stdio session: the gateway's own POST URL on the route, with the
gateway's session id (the stdio forwarder names it `/messages/?session_id=<id>` in the stream's first event). There
is no upstream URL to check it against: the session's POSTs go to its process."""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.policy.stdio import STDIO_INSTANCE
from gateway.upstream.legacy_sse import RewrittenEndpoint, session_id_of


def stdio_endpoint(data: str, route_prefix: str, public_url: str) -> RewrittenEndpoint:
    parts = urlsplit(data.strip())
    path = f"{urlsplit(public_url).path.rstrip('/')}{route_prefix}{parts.path or '/'}"
    if parts.query:
        path = f"{path}?{parts.query}"
    return RewrittenEndpoint(client=path, upstream=STDIO_INSTANCE, session_id=session_id_of(parts.query))
