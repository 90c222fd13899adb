"""Which headers cross the gateway, in each direction.

Client -> upstream: hop-by-hop headers are dropped (RFC 9110 7.6.1), and so are the client's credentials
(Authorization, cookies, API key: token passthrough is forbidden by MCP) and Host/Origin (the upstream gets its own).
MCP headers (Mcp-Session-Id, MCP-Protocol-Version, Last-Event-ID, Mcp-Method, Mcp-Name, Mcp-Param-*, Accept) pass
unchanged. `Accept-Encoding: identity` is sent so event streams are never compressed and bytes relay as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# never forwarded upstream: credentials and identity of the client's connection
CLIENT_ONLY = frozenset(
    {
        "authorization",
        "cookie",
        "x-api-key",
        "host",
        "origin",
        "referer",
        "content-length",
        "accept-encoding",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
        "x-real-ip",
        "expect",
    }
)
# never relayed back to the client
UPSTREAM_ONLY = frozenset(
    {"content-length", "set-cookie", "server", "date", "content-encoding", "www-authenticate", "alt-svc"}
)


# unions computed once, not per request
_DROP_TO_UPSTREAM = HOP_BY_HOP | CLIENT_ONLY
_DROP_TO_CLIENT = HOP_BY_HOP | UPSTREAM_ONLY


def _connection_tokens(headers: Mapping[str, str]) -> set[str]:
    value = headers.get("Connection", "")
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def upstream_request_headers(
    client: CIMultiDictProxy[str] | CIMultiDict[str],
    *,
    request_id: str,
    client_ip: str,
    proto: str,
    extra: Iterable[tuple[str, str]] = (),
) -> CIMultiDict[str]:
    tokens = _connection_tokens(client)
    drop = _DROP_TO_UPSTREAM if tokens <= _DROP_TO_UPSTREAM else _DROP_TO_UPSTREAM | tokens
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in client.items():
        if name.lower() not in drop:
            out.add(name, value)
    out["Accept-Encoding"] = "identity"
    out["X-Request-ID"] = request_id
    out["X-Forwarded-For"] = client_ip
    out["X-Forwarded-Proto"] = proto
    for name, value in extra:
        out[name] = value
    return out


def client_response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    tokens = _connection_tokens(upstream)
    drop = _DROP_TO_CLIENT if tokens <= _DROP_TO_CLIENT else _DROP_TO_CLIENT | tokens
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in drop:
            out.add(name, value)
    return out
