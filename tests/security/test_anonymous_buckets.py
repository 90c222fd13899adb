"""Anonymous callers of one tenant's public server cannot use up what another tenant's public server needs.

Anonymous principals have no tenant. Their sessions and streams used to count against one shared `_anonymous`
bucket, so a few addresses opening sessions on tenant acme's public server (8 with the default caps) locked every
other tenant's anonymous routes out with 429 `session_limit` (found by the red team). Each route's anonymous
callers are now a bucket of their own for the session cap, the stream caps and an upstream's stream fair share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Gateway, running, start_gateway, start_redis, start_upstream

pytestmark = pytest.mark.e2e

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "anon", "version": "1"}},
}


@pytest.fixture(params=["embedded", "redis"])
def gw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    redis = start_redis(tmp_path) if request.param == "redis" else None
    up = start_upstream(tmp_path)
    public = {"anonymous": True}
    policies = {
        "servers.yaml": {
            "servers": {
                "acmepub": {"upstreams": [{"url": up.url}], "owner": "acme", "auth": public},
                "betapub": {"upstreams": [{"url": up.url}], "owner": "beta", "auth": public},
            }
        },
        "tenants.yaml": {"tenants": {"acme": {}, "beta": {}}},
        "access.yaml": {"rules": []},
    }
    config: dict[str, object] = {
        "http": {"max_sessions_per_key": 2, "max_sessions_per_tenant": 4, "trusted_proxies": ["127.0.0.1/32"]}
    }
    if redis is not None:
        config["redis"] = {"url": redis.url}
    gateway = start_gateway(tmp_path / "gw", policies, config=config)
    try:
        with running(gateway, up):
            yield gateway
    finally:
        if redis is not None:
            redis.stop()


def init(http: httpx.Client, gw: Gateway, server: str, address: str) -> httpx.Response:
    return http.post(gw.url(server), json=INIT, headers={**ACCEPT, "X-Forwarded-For": address})


def test_anonymous_sessions_of_one_tenants_route_never_refuse_anothers(gw: Gateway) -> None:
    with httpx.Client(timeout=30) as http:
        for address in ("198.51.100.1", "198.51.100.2"):
            for _ in range(2):
                r = init(http, gw, "acmepub", address)
                assert r.status_code == 200, r.text
        # acme's public route is at its cap of 4 anonymous sessions ...
        full = init(http, gw, "acmepub", "198.51.100.3")
        assert full.status_code == 429 and full.json()["error"]["data"]["reason"] == "session_limit", full.text
        # ... and beta's public route is untouched by it
        for address in ("203.0.113.1", "203.0.113.2"):
            r = init(http, gw, "betapub", address)
            assert r.status_code == 200, r.text


async def test_one_anonymous_address_cannot_take_every_stream_of_a_public_route(tmp_path: Path) -> None:
    """Anonymous callers have no key: each client address stands for one under the per-key stream cap, so one
    address cannot fill the route's anonymous stream bucket for the others (review finding)."""
    import aiohttp

    up = start_upstream(tmp_path)
    policies = {
        "servers.yaml": {
            "servers": {"acmepub": {"upstreams": [{"url": up.url}], "owner": "acme", "auth": {"anonymous": True}}}
        },
        "tenants.yaml": {"tenants": {"acme": {}}},
        "limits.yaml": {"streams": {"per_key": 2, "per_tenant": 100}},
        "access.yaml": {"rules": []},
    }
    gateway = start_gateway(tmp_path / "gw", policies, config={"http": {"trusted_proxies": ["127.0.0.1/32"]}})

    async def stream(http: aiohttp.ClientSession, address: str) -> aiohttp.ClientResponse:
        headers = {**ACCEPT, "X-Forwarded-For": address}
        async with http.post(gateway.url("acmepub"), json=INIT, headers=headers) as r:
            assert r.status == 200, await r.text()
            sid = r.headers["Mcp-Session-Id"]
        get = {"Accept": "text/event-stream", "X-Forwarded-For": address, "Mcp-Session-Id": sid}
        return await http.get(gateway.url("acmepub"), headers=get)

    with running(gateway, up):
        async with aiohttp.ClientSession() as http:
            held = [await stream(http, "198.51.100.1") for _ in range(2)]
            assert [r.status for r in held] == [200, 200]
            third = await stream(http, "198.51.100.1")
            assert third.status == 429 and (await third.json())["error"]["data"]["limit"] == "key_streams"
            other = await stream(http, "198.51.100.2")
            assert other.status == 200  # another address of the same public route still gets its streams
            for r in (*held, third, other):
                r.close()
