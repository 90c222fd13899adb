"""Item 5 of issue 19: a 401 on a route that takes API keys carries the challenge RFC 9110 requires
(`WWW-Authenticate: ApiKey realm="mcp-gateway"`), and the official Python SDK's OAuth helpers find nothing in it to
discover: no `resource_metadata`, no `error`, no `scope` (mcp/client/auth/utils.py reads exactly those)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from mcp.client.auth.utils import (
    build_protected_resource_metadata_discovery_urls,
    extract_field_from_www_auth,
    extract_resource_metadata_from_www_auth,
    extract_scope_from_www_auth,
)
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth.jwks import JwksRegistry
from gateway.auth.state import AuthState
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.filters.authn import ADMIN_ROUTE, API_KEY_CHALLENGE, Authn, RouteAuthn

pytestmark = pytest.mark.unit

API_ONLY = RouteAuthn(True, False, frozenset(), None, None)
OAUTH = RouteAuthn(True, False, frozenset(), None, "https://gw.example/.well-known/oauth-protected-resource/mcp/o")


def ctx(server: str, *pairs: tuple[str, str]) -> RequestContext:
    return RequestContext(
        request_id="r1",
        snapshot=None,  # type: ignore[arg-type]  # authn reads no snapshot
        server_name=server,
        server=None,
        client_ip="127.0.0.1",
        transport="streamable-http",
        http_method="POST",
        headers=CIMultiDictProxy(CIMultiDict(pairs)),
    )


async def refusal(route: RouteAuthn, *pairs: tuple[str, str]) -> GatewayError:
    state = AuthState(hmac_secret=b"k" * 32, public_url="https://gw.example", jwks=JwksRegistry())
    authn = Authn({"r": route}, {}, state)
    with pytest.raises(GatewayError) as info:
        await authn(ctx("r", *pairs))
    return info.value


@pytest.mark.parametrize(
    "pairs",
    [
        (),
        (("Authorization", "Basic dXNlcjpwYXNz"),),
        (("Authorization", "Bearer mgw_nobody_0123456789abcdef0123"),),
        (("X-API-Key", "mgw_nobody_0123456789abcdef0123"),),
        (("Authorization", "Bearer a.b.c"),),
    ],
)
async def test_api_key_route_401_carries_apikey_challenge(pairs: tuple[tuple[str, str], ...]) -> None:
    err = await refusal(API_ONLY, *pairs)
    assert err.status == 401
    assert err.headers["WWW-Authenticate"] == 'ApiKey realm="mcp-gateway"' == API_KEY_CHALLENGE


async def test_malformed_header_is_400_without_challenge() -> None:
    err = await refusal(API_ONLY, ("Authorization", "Bearer a b"))
    assert err.status == 400 and "WWW-Authenticate" not in err.headers


async def test_admin_route_challenges_too() -> None:
    err = await refusal(ADMIN_ROUTE)
    assert err.headers["WWW-Authenticate"] == API_KEY_CHALLENGE


async def test_oauth_route_keeps_bearer_challenge() -> None:
    err = await refusal(OAUTH)
    assert err.headers["WWW-Authenticate"].startswith('Bearer resource_metadata="https://gw.example/')


def _sdk_response(challenge: str) -> httpx.Response:
    request = httpx.Request("POST", "https://gw.example/mcp/r")
    return httpx.Response(401, headers={"WWW-Authenticate": challenge}, request=request)


def test_python_sdk_finds_nothing_to_discover_in_the_challenge() -> None:
    resp = _sdk_response(API_KEY_CHALLENGE)
    assert extract_resource_metadata_from_www_auth(resp) is None
    assert extract_scope_from_www_auth(resp) is None
    assert extract_field_from_www_auth(resp, "error") is None
    # so an SDK client built with an OAuth provider would only probe the well-known URLs, which 404 on a route
    # that is not an OAuth route (gateway/auth/resource.py); the challenge itself names none
    urls: Any = build_protected_resource_metadata_discovery_urls(
        extract_resource_metadata_from_www_auth(resp), "https://gw.example/mcp/r"
    )
    assert urls and all("/.well-known/oauth-protected-resource" in u for u in urls)
    # while the OAuth route's challenge does point the SDK at metadata
    oauth = _sdk_response('Bearer resource_metadata="https://gw.example/.well-known/oauth-protected-resource/mcp/o"')
    assert extract_resource_metadata_from_www_auth(oauth) == (
        "https://gw.example/.well-known/oauth-protected-resource/mcp/o"
    )
