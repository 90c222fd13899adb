"""Which headers cross the gateway, in each direction.

Client -> upstream: hop-by-hop headers are dropped (RFC 9110 7.6.1), and so are the client's credentials
(Authorization, cookies, API key: token passthrough is forbidden by MCP) and Host/Origin (the upstream gets its own).
MCP headers (Mcp-Session-Id, MCP-Protocol-Version, Last-Event-ID, Mcp-Method, Mcp-Name, Mcp-Param-*, Accept) pass
unchanged. `Accept-Encoding: identity` is sent so event streams are never compressed and bytes relay as they are.
The forwarders then put in the one `Mcp-Session-Id` routing checked (`set_session_header`), never the client's own.
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


# Header names as they arrive (per direction) -> whether they cross when the Connection header names
# nothing beyond the fixed set (the usual case): the same dozen names arrive on every request, and a lookup
# replaces lowering each one. Bounded: emptied when full, so odd names only cost the lowering again.
_TO_UPSTREAM: dict[str, bool] = {}
_TO_CLIENT: dict[str, bool] = {}
_NAMES_MAX = 1024


def _kept(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], fixed: frozenset[str], memo: dict[str, bool]
) -> list[tuple[str, str]]:
    """(name, value) pairs of `headers` not dropped: not in `fixed` and not named by their Connection header."""
    tokens = _connection_tokens(headers) if "Connection" in headers else set()
    if not tokens <= fixed:
        drop = fixed | tokens
        return [(name, value) for name, value in headers.items() if name.lower() not in drop]
    out: list[tuple[str, str]] = []
    for name, value in headers.items():
        keep = memo.get(name)
        if keep is None:
            keep = name.lower() not in fixed
            if len(memo) >= _NAMES_MAX:
                memo.clear()
            memo[name] = keep
        if keep:
            out.append((name, value))
    return out


def upstream_request_headers(
    client: CIMultiDictProxy[str] | CIMultiDict[str],
    *,
    request_id: str,
    client_ip: str,
    proto: str,
    extra: Iterable[tuple[str, str]] = (),
) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict(_kept(client, _DROP_TO_UPSTREAM, _TO_UPSTREAM))
    out["Accept-Encoding"] = "identity"
    out["X-Request-ID"] = request_id
    out["X-Forwarded-For"] = client_ip
    out["X-Forwarded-Proto"] = proto
    for name, value in extra:
        out[name] = value
    return out


def client_response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict(_kept(upstream, _DROP_TO_CLIENT, _TO_CLIENT))


def set_session_header(headers: CIMultiDict[str], session_id: str | None) -> None:
    """Send the upstream exactly the session id routing checked against its binding: whatever the client sent
    (two headers, or one on a request or transport that does not route by it) is replaced or removed."""
    if session_id is not None:
        headers["Mcp-Session-Id"] = session_id  # replaces every value the client sent
    elif "Mcp-Session-Id" in headers:
        headers.popall("Mcp-Session-Id")
