"""Which status a refusal is sent with (gateway/transports/refusal_status.py), per setting, era, transport and stage.
The clients' reactions behind these choices are measured end to end in tests/e2e/test_client_matrix.py."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.context import RequestContext
from gateway.errors import (
    CircuitOpen,
    Forbidden,
    GatewayError,
    InvalidRequest,
    IpBlocked,
    RateLimited,
    SessionNotFound,
    Unauthenticated,
    UpstreamUnavailable,
)
from gateway.jsonrpc import parse_message
from gateway.policy.servers import ServerPolicy
from gateway.transports.refusal_status import status_200

pytestmark = pytest.mark.unit

CALL = orjson.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "add"}})
INIT = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}})


def ctx(
    *,
    transport: str = "streamable-http",
    method: str = "POST",
    era: str | None = None,
    parsed: bool = True,
    body: bytes = CALL,
) -> RequestContext:
    c = RequestContext(
        request_id="r",
        snapshot=None,  # type: ignore[arg-type]
        server_name="s",
        server=None,
        client_ip="127.0.0.1",
        transport=transport,
        http_method=method,
    )
    if parsed:
        c.message = parse_message(body)
    if era is not None:
        c.notes["era"] = era
    return c


def server(setting: Any = "auto") -> ServerPolicy:
    return ServerPolicy.model_validate({"upstreams": [{"url": "http://127.0.0.1:1/mcp"}], "compat_status_200": setting})


def refusal(cls: type[GatewayError], stage: str, **kw: Any) -> GatewayError:
    if issubclass(cls, (RateLimited, IpBlocked, CircuitOpen)):
        return cls("no", stage=stage, retry_after=1, **kw)
    return cls("no", stage=stage, **kw)


def test_default_is_auto() -> None:
    assert ServerPolicy.model_validate({"upstreams": [{"url": "http://h/mcp"}]}).compat_status_200 == "auto"


@pytest.mark.parametrize(
    "err",
    [
        refusal(Forbidden, "authz"),
        refusal(RateLimited, "ratelimit"),
        refusal(CircuitOpen, "breaker"),
        refusal(UpstreamUnavailable, "forward"),
        GatewayError("cap", stage="session", status=429, reason="session_limit"),
    ],
    ids=lambda e: e.reason,
)
def test_auto_answers_message_refusals_with_200_on_legacy_posts(err: GatewayError) -> None:
    assert status_200(ctx(), server(), err)
    assert status_200(ctx(transport="sse"), server(), err)
    assert status_200(ctx(), None, err)  # an unknown route reads as auto


@pytest.mark.parametrize(
    ("c", "err"),
    [
        (ctx(era="modern"), refusal(Forbidden, "authz")),  # 2026-07-28: the 2.x SDK reads 4xx bodies
        (ctx(), refusal(Unauthenticated, "authn")),
        # a scope step-up challenge on an OAuth route
        (ctx(), refusal(Forbidden, "authz", headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'})),
        (ctx(), refusal(IpBlocked, "client_guard")),
        (ctx(), refusal(SessionNotFound, "session")),
        (ctx(), refusal(InvalidRequest, "session", reason="duplicate_request_id")),
        (ctx(method="GET", parsed=False), refusal(RateLimited, "ratelimit")),
        (ctx(method="DELETE", parsed=False), refusal(Forbidden, "authz")),
        (ctx(parsed=False), refusal(RateLimited, "ratelimit")),  # refused before its body was read
        (ctx(), GatewayError("moved", stage="route", status=503, reason="route_changed")),
        (ctx(body=INIT), GatewayError("cap", stage="session", status=429, reason="session_limit")),
    ],
    ids=[
        "modern",
        "401",
        "challenge",
        "ip_block",
        "404",
        "400",
        "get",
        "delete",
        "unparsed",
        "route",
        "initialize",
    ],
)
def test_auto_keeps_the_status(c: RequestContext, err: GatewayError) -> None:
    assert not status_200(c, server(), err)


def test_overrides() -> None:
    assert status_200(ctx(method="GET", parsed=False), server(True), refusal(Unauthenticated, "authn"))
    assert not status_200(ctx(), server(True), refusal(SessionNotFound, "session"))
    assert not status_200(ctx(), server(False), refusal(Forbidden, "authz"))
    assert not status_200(ctx(transport="sse"), server(False), refusal(RateLimited, "ratelimit"))
