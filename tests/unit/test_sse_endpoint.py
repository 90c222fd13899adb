"""Legacy `endpoint` event rewrite onto the gateway route, keeping path and query."""

from __future__ import annotations

import pytest

from gateway.upstream.legacy_sse import BoundedPending, rewrite_endpoint, session_id_of

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("data", "sse_url", "public", "client", "upstream", "sid"),
    [
        # Python SDK shape, relative
        (
            "/messages/?session_id=abc",
            "http://10.0.0.5:9001/sse",
            "https://gw.example",
            "/mcp/srv/messages/?session_id=abc",
            "http://10.0.0.5:9001/messages/?session_id=abc",
            "abc",
        ),
        # TypeScript SDK shape
        (
            "/message?sessionId=u-1",
            "http://up:3001/sse",
            "http://127.0.0.1:8080",
            "/mcp/srv/message?sessionId=u-1",
            "http://up:3001/message?sessionId=u-1",
            "u-1",
        ),
        # relative to the SSE URL's directory
        (
            "messages?session_id=x",
            "http://up/base/sse",
            "http://gw",
            "/mcp/srv/base/messages?session_id=x",
            "http://up/base/messages?session_id=x",
            "x",
        ),
        # absolute upstream URL -> absolute gateway URL on the public origin, behind a path prefix
        (
            "http://internal:9001/messages/?session_id=abc&x=1",
            "http://internal:9001/sse",
            "https://gw.example/prefix/",
            "https://gw.example/prefix/mcp/srv/messages/?session_id=abc&x=1",
            "http://internal:9001/messages/?session_id=abc&x=1",
            "abc",
        ),
    ],
)
def test_rewrite(data: str, sse_url: str, public: str, client: str, upstream: str, sid: str) -> None:
    r = rewrite_endpoint(data, sse_url, "/mcp/srv", public)
    assert (r.client, r.upstream, r.session_id) == (client, upstream, sid)


def test_session_id_of() -> None:
    assert session_id_of("session_id=a") == "a"
    assert session_id_of("sessionId=b&x=1") == "b"
    assert session_id_of("x=1") is None
    assert session_id_of("session_id=") is None


def test_bounded_pending_forgets_oldest() -> None:
    pending = BoundedPending(2)
    for i in range(3):
        pending[i] = lambda m: m
    assert list(pending) == [1, 2]
