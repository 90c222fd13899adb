"""The client's address behind a trusted proxy that adds its own `X-Forwarded-For` line instead of appending to the
client's (HAProxy `option forwardfor` does): the client's forged first line must not be taken as the whole chain
(docs/security.md "Client address"). Before, only the first line was read, so a key limited by `allow_ips` worked
from anywhere for a client that sent the allowed address itself.

Raw HTTP (aiohttp, two header lines) through a real gateway process that trusts 127.0.0.1, on both HTTP servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.harness import (
    MCP_POST_HEADERS,
    Gateway,
    default_policies,
    initialize_request,
    running,
    start_gateway,
    start_upstream,
)

pytestmark = pytest.mark.e2e

ALLOWED = "203.0.113.7"
ACCEPT = MCP_POST_HEADERS
INIT = initialize_request("t")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp: Path = tmp_path_factory.mktemp("xff")
    up = start_upstream(tmp)
    keys = {"pinned": {"tenant": "acme", "scopes": ["read", "write"], "allow_ips": [f"{ALLOWED}/32"]}}
    gw = start_gateway(
        tmp / "gw", default_policies(up.url), keys=keys, config={"http": {"trusted_proxies": ["127.0.0.1/32"]}}
    )
    with running(gw, up):
        yield gw


@pytest.mark.parametrize("server", ["lean", "aiohttp"])
async def test_a_forged_first_forwarded_for_line_is_not_the_client(gateway: Gateway, server: str) -> None:
    gw = gateway
    url = gw.url() if server == "lean" else gw.url() + "?via=aiohttp"  # a query string goes to aiohttp's server
    async with aiohttp.ClientSession() as http:
        # the proxy's own line names the real client; the client's forged line comes first
        forged = CIMultiDict({**ACCEPT, **gw.auth("pinned")})
        forged.add("X-Forwarded-For", ALLOWED)
        forged.add("X-Forwarded-For", "198.51.100.1")
        async with http.post(url, json=INIT, headers=forged) as r:
            body = await r.json()
            assert r.status == 403 and body["error"]["data"]["reason"] == "key_ip_not_allowed", body
        # the same key from the allowed address (one line, as the proxy appends) still works
        honest = {**ACCEPT, **gw.auth("pinned"), "X-Forwarded-For": ALLOWED}
        async with http.post(url, json=INIT, headers=honest) as r:
            assert r.status == 200, await r.text()
