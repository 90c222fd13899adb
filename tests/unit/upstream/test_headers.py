"""Which headers cross the gateway: hop-by-hop and credentials dropped, MCP headers kept, both directions."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.upstream.headers import HOP_BY_HOP, client_response_headers, upstream_request_headers

pytestmark = pytest.mark.unit

MCP_HEADERS = {
    "Mcp-Session-Id": "sess-1",
    "MCP-Protocol-Version": "2025-06-18",
    "Last-Event-ID": "ev-9",
    "Mcp-Method": "tools/call",
    "Mcp-Name": "add",
    "Mcp-Param-Region": "eu",
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
}


def upstream(headers: list[tuple[str, str]]) -> CIMultiDict[str]:
    return upstream_request_headers(
        CIMultiDictProxy(CIMultiDict(headers)),
        request_id="rid-1",
        client_ip="203.0.113.7",
        proto="https",
        extra=[("Authorization", "Bearer upstream-own")],
    )


def test_mcp_headers_pass_unchanged() -> None:
    out = upstream(list(MCP_HEADERS.items()))
    for name, value in MCP_HEADERS.items():
        assert out.getall(name) == [value]


def test_client_credentials_never_reach_the_upstream() -> None:
    out = upstream(
        [
            ("Authorization", "Bearer client-secret"),
            ("Cookie", "sid=1"),
            ("X-API-Key", "mgw_x_y"),
            ("Proxy-Authorization", "Basic abc"),
            ("Host", "gateway.example"),
            ("Origin", "https://evil.example"),
        ]
    )
    # the only Authorization is the gateway's own upstream credential
    assert out.getall("Authorization") == ["Bearer upstream-own"]
    for name in ("Cookie", "X-API-Key", "Proxy-Authorization", "Host", "Origin"):
        assert name not in out
    assert "client-secret" not in str(out)


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_hop_by_hop_headers_are_dropped(name: str) -> None:
    out = upstream([(name, "x"), ("Mcp-Session-Id", "s")])
    assert name not in out and out["Mcp-Session-Id"] == "s"


def test_headers_listed_in_connection_are_dropped() -> None:
    out = upstream(
        [("Connection", "keep-alive, X-Private, x-other"), ("X-Private", "1"), ("X-Other", "2"), ("X-Kept", "3")]
    )
    assert "X-Private" not in out and "X-Other" not in out and "Connection" not in out
    assert out["X-Kept"] == "3"


def test_forwarding_headers_are_the_gateways_not_the_clients() -> None:
    out = upstream([("X-Forwarded-For", "1.2.3.4"), ("X-Request-ID", "client-said"), ("Forwarded", "for=1.2.3.4")])
    assert out.getall("X-Forwarded-For") == ["203.0.113.7"]
    assert out.getall("X-Request-ID") == ["rid-1"]
    assert out["X-Forwarded-Proto"] == "https"
    assert "Forwarded" not in out


def test_upstream_never_compresses_and_length_is_recomputed() -> None:
    out = upstream([("Accept-Encoding", "gzip, br"), ("Content-Length", "999"), ("Transfer-Encoding", "chunked")])
    assert out.getall("Accept-Encoding") == ["identity"]
    assert "Content-Length" not in out and "Transfer-Encoding" not in out


def test_repeated_headers_keep_every_value() -> None:
    out = upstream([("X-Multi", "a"), ("X-Multi", "b")])
    assert out.getall("X-Multi") == ["a", "b"]


def test_response_headers_to_the_client() -> None:
    resp = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Content-Type", "text/event-stream"),
                ("Mcp-Session-Id", "sess-2"),
                ("Cache-Control", "no-cache"),
                ("Connection", "keep-alive, X-Internal"),
                ("X-Internal", "secret-topology"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Length", "10"),
                ("Content-Encoding", "gzip"),
                ("Set-Cookie", "upstream=1"),
                ("Server", "uvicorn"),
                ("WWW-Authenticate", "Bearer realm=upstream"),
            ]
        )
    )
    out = client_response_headers(resp)
    assert dict(out) == {"Content-Type": "text/event-stream", "Mcp-Session-Id": "sess-2", "Cache-Control": "no-cache"}
