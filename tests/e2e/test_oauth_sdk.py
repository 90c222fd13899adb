"""Issue 19, the sign-in flow as a client does it: the official Python SDK's OAuth helper
(`mcp.client.auth.OAuthClientProvider`) with no API key discovers the built-in authorization server from the
gateway's 401, registers (RFC 7591), runs authorization code + PKCE through the sign-in and consent pages (driven
by an aiohttp "browser" that follows the redirect to a local callback), gets a token, refreshes it, and calls a
tool through a real gateway process to an SDK upstream. And item 5: on an API-key route the SDK's plain client
meets the `ApiKey` challenge and makes no discovery request."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from pydantic import AnyUrl

from tests.harness import Gateway, Upstream, free_port, start_upstream
from tests.security.oauth_browser import Browser, start_oauth_gateway

pytestmark = pytest.mark.e2e

GUARD = 60.0  # hang guard only, never a timing assertion


class MemoryStorage:
    """The SDK's `TokenStorage`: what a desktop client keeps between runs."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None
        self.token_history: list[OAuthToken] = []

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.token_history.append(tokens)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class Callback:
    """The client's loopback redirect target (RFC 8252 7.3): records what the browser brings back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/callback"
        self.hits: asyncio.Queue[tuple[str | None, str | None]] = asyncio.Queue()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def callback(request: web.Request) -> web.Response:
            await self.hits.put((request.query.get("code"), request.query.get("state")))
            return web.Response(text="signed in; you can close this window")

        app = web.Application()
        app.router.add_get("/callback", callback)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Upstream]]:
    work = tmp_path_factory.mktemp("oauth-sdk")
    up = start_upstream(work)
    gw = start_oauth_gateway(work, f"http://127.0.0.1:{up.port}/mcp")
    try:
        yield gw, up
    finally:
        gw.stop()
        up.proc.stop()


@pytest.fixture
async def callback() -> AsyncIterator[Callback]:
    cb = Callback()
    await cb.start()
    try:
        yield cb
    finally:
        await cb.stop()


def audit_lines(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_sdk_oauth_client_signs_in_refreshes_and_calls_a_tool(
    gateway: tuple[Gateway, Upstream], callback: Callback
) -> None:
    gw, _ = gateway
    browser = Browser(gw, "203.0.113.7")
    pages: list[int] = []

    async def redirect_handler(url: str) -> None:
        # what the user does in the browser the client opened
        assert url.startswith(gw.base + "/oauth/authorize?"), url
        page = await browser.open(url)
        pages.append(page.status)
        assert page.status == 200 and "SDK e2e" in page.text, page.text
        consent = await browser.sign_in(page, gw.keys["rw"])
        assert consent.status == 200, consent.text
        done = await browser.consent(consent, follow=True)  # 302 to the loopback callback, followed
        assert done.status == 200 and "signed in" in done.text, done.text

    async def callback_handler() -> tuple[str, str | None]:
        code, state = await callback.hits.get()
        assert code is not None
        return code, state

    storage = MemoryStorage()
    provider = OAuthClientProvider(
        server_url=gw.url("o"),
        client_metadata=OAuthClientMetadata(redirect_uris=[AnyUrl(callback.url)], client_name="SDK e2e"),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    seen: list[tuple[str, str, int]] = []

    async def record(response: httpx.Response) -> None:
        seen.append((response.request.method, response.request.url.path, response.status_code))

    try:
        async with asyncio.timeout(GUARD):
            async with (
                httpx.AsyncClient(auth=provider, timeout=30, event_hooks={"response": [record]}) as http,
                streamable_http_client(gw.url("o"), http_client=http) as (read, write, _),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                result = await session.call_tool("add", {"a": 2, "b": 40})
                assert result.content[0].text == "42"  # type: ignore[union-attr]
                first = storage.tokens
                assert first is not None and first.refresh_token and first.scope == "read write"
                # the client's clock says the access token expired: its next request refreshes first
                provider.context.token_expiry_time = time.time() - 1
                result = await session.call_tool("add", {"a": 1, "b": 1})
                assert result.content[0].text == "2"  # type: ignore[union-attr]
    finally:
        await browser.close()
    assert pages == [200]
    # discovery started from the 401 and its WWW-Authenticate, in the order the SDK follows
    paths = [(m, p, s) for m, p, s in seen]
    assert paths[0] == ("POST", "/mcp/o", 401), paths
    assert ("GET", "/.well-known/oauth-protected-resource/mcp/o", 200) in paths
    assert ("GET", "/.well-known/oauth-authorization-server", 200) in paths
    assert ("POST", "/oauth/register", 201) in paths
    assert [p for p in paths if p[1] == "/oauth/token"] == [("POST", "/oauth/token", 200)] * 2
    # the refresh rotated both tokens
    assert len(storage.token_history) == 2
    second = storage.token_history[1]
    assert second.access_token != first.access_token and second.refresh_token != first.refresh_token
    # the gateway's audit saw the sign-in, both grants and the tool calls, all of tenant acme's key rw
    deadline = time.monotonic() + 10
    grants: list[str] = []
    calls: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        records = audit_lines(gw.workdir)
        grants = [r["notes"]["grant_type"] for r in records if r.get("rpc_method") == "oauth/token" and r.get("notes")]
        calls = [r for r in records if r.get("server") == "o" and r.get("tool") == "add"]
        if len(grants) >= 2 and len(calls) >= 2:
            break
        await asyncio.sleep(0.2)
    assert grants[:2] == ["authorization_code", "refresh_token"], grants
    assert len(calls) >= 2 and all(
        c["tenant"] == "acme" and c["key_id"] == "rw" and c["http_status"] == 200 for c in calls
    ), calls


async def test_sdk_without_credentials_on_api_key_route_starts_no_discovery(
    gateway: tuple[Gateway, Upstream],
) -> None:
    gw, _ = gateway
    seen: list[httpx.Response] = []

    async def record(response: httpx.Response) -> None:
        seen.append(response)

    # the SDK 1.x ends the session on a 401: raise_for_status() in its transport's task group (docs/transports.md)
    with pytest.raises((ExceptionGroup, httpx.HTTPStatusError)):
        async with asyncio.timeout(GUARD):
            async with (
                httpx.AsyncClient(timeout=30, event_hooks={"response": [record]}) as http,
                streamable_http_client(gw.url("keysonly"), http_client=http) as (read, write, _),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
    assert seen, "the client sent nothing"
    assert {r.request.url.path for r in seen} == {"/mcp/keysonly"}, [str(r.request.url) for r in seen]
    refused = seen[0]
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'ApiKey realm="mcp-gateway"'
