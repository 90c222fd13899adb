"""Legacy `endpoint` event rewrite onto the gateway route, keeping path and query."""

from __future__ import annotations

import pytest

from gateway.jsonrpc import Envelope, Kind
from gateway.transports.inflight import InFlightIds
from gateway.upstream.legacy_sse import EndpointRefused, rewrite_endpoint, session_id_of

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


def test_in_flight_ids_forget_oldest() -> None:
    in_flight = InFlightIds(2)
    for i in range(3):
        in_flight.claim([Envelope(Kind.REQUEST, i, "ping")])
    assert len(in_flight) == 2
    in_flight.claim([Envelope(Kind.REQUEST, 0, "ping")])  # the oldest was forgotten: answers that never come


@pytest.mark.parametrize(
    "data",
    [
        "http://127.0.0.1:9002/messages?session_id=a",  # another port
        "//evil.example/messages?session_id=a",  # scheme-relative: another host
        "https://up:9001/messages?session_id=a",  # another scheme
        "http://UP.other:9001/messages?session_id=a",  # another host name
        "http://intruder:pw@up:9001/messages?session_id=a",  # credentials of its own
        "http://up:99999/messages",  # a port that is no port
        "/messages?session_id=a b",  # whitespace
        "/messages?session_id=a\x7f",  # control character
        "",
        "/" + "m" * 2048,  # too long to be meant
    ],
)
def test_endpoint_off_the_upstream_origin_is_refused(data: str) -> None:
    with pytest.raises(EndpointRefused) as info:
        rewrite_endpoint(data, "http://up:9001/sse", "/mcp/srv", "http://gw")
    assert "intruder" not in str(info.value) and "pw" not in str(info.value)  # safe to log


@pytest.mark.parametrize(
    ("data", "sse_url"),
    [
        ("http://UP:9001/messages?session_id=a", "http://up:9001/sse"),  # host names are case-insensitive
        ("http://up:80/messages?session_id=a", "http://up/sse"),  # the default port, spelt out
        ("https://up/messages?session_id=a", "https://up:443/sse"),
        ("http://u:pw@up:9001/m?session_id=a", "http://u:pw@up:9001/sse"),  # the upstream's own userinfo
        ("../messages?session_id=a", "http://up:9001/a/sse"),
    ],
)
def test_endpoint_on_the_upstream_origin_is_kept(data: str, sse_url: str) -> None:
    assert rewrite_endpoint(data, sse_url, "/mcp/srv", "http://gw").session_id == "a"
