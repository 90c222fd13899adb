"""Helpers (no tests here) for the built-in authorization server's tests: a gateway with `oauth.enabled`, and a
"browser" that drives the sign-in and consent pages the way a person's browser does (GET the page, POST the
form with the cookie and the CSRF token it carries, follow or capture the redirect)."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp

from tests.harness import Gateway, start_gateway

HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def oauth_policies(upstream_url: str, *, revoked: bool = False) -> dict[str, Any]:
    up = [{"url": upstream_url}]
    both = {"methods": ["api_key", "oauth"]}
    return {
        "servers.yaml": {
            "servers": {
                "o": {"upstreams": up, "owner": "acme", "auth": both},
                "p": {"upstreams": up, "owner": "acme", "auth": both},
                "g": {"upstreams": up, "owner": "globex", "auth": {"methods": ["oauth"]}},
                "keysonly": {"upstreams": up, "owner": "acme"},
            }
        },
        "tenants.yaml": {"tenants": {"acme": {}, "globex": {}}},
        "limits.yaml": {},
        "access.yaml": {"rules": []},
    }


KEYS: dict[str, dict[str, Any]] = {
    "rw": {"tenant": "acme", "scopes": ["read", "write"]},
    "ro": {"tenant": "acme", "scopes": ["read"]},
    "victim": {"tenant": "acme", "scopes": ["read", "write"]},
    "gx": {"tenant": "globex", "scopes": ["read", "write"]},
}


def start_oauth_gateway(
    workdir: Path, upstream_url: str, *, extra_config: dict[str, Any] | None = None, **oauth: Any
) -> Gateway:
    config: dict[str, Any] = {
        # every test speaks from its own address (X-Forwarded-For from loopback is believed), so the per-address
        # limits of one test do not spend another's budget
        "http": {"trusted_proxies": ["127.0.0.1/32"]},
        "oauth": {"enabled": True, "signing_key_path": str(workdir / "oauth-key.pem"), **oauth},
    }
    return start_gateway(workdir, oauth_policies(upstream_url), keys=KEYS, config={**config, **(extra_config or {})})


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@dataclass
class Page:
    status: int
    text: str
    headers: Any
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def location(self) -> str | None:
        value = self.headers.get("Location")
        return str(value) if value is not None else None


class Browser:
    """One browser: its own cookie jar, its own client address (X-Forwarded-For)."""

    def __init__(self, gw: Gateway, address: str) -> None:
        self.gw = gw
        self.address = address
        # a browser keeps cookies of an IP-address host too
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.session.close()

    def headers(self, **extra: str) -> dict[str, str]:
        return {"X-Forwarded-For": self.address, **extra}

    async def _page(self, resp: aiohttp.ClientResponse) -> Page:
        text = await resp.text()
        fields = {html.unescape(k): html.unescape(v) for k, v in HIDDEN.findall(text)}
        return Page(resp.status, text, resp.headers, fields)

    async def open(self, url: str) -> Page:
        async with self.session.get(url, headers=self.headers(), allow_redirects=False) as resp:
            return await self._page(resp)

    async def submit(self, path: str, form: dict[str, str], *, follow: bool = False, **headers: str) -> Page:
        async with self.session.post(
            self.gw.base + path, data=form, headers=self.headers(**headers), allow_redirects=follow
        ) as resp:
            return await self._page(resp)

    async def sign_in(self, page: Page, api_key: str) -> Page:
        return await self.submit("/oauth/authorize", {**page.fields, "api_key": api_key})

    async def consent(self, page: Page, decision: str = "approve", *, follow: bool = False) -> Page:
        return await self.submit("/oauth/consent", {**page.fields, "decision": decision}, follow=follow)

    # -- the client side, as an MCP client's OAuth helper does it ---------------------------------------------

    async def register(self, redirect_uri: str, **body: Any) -> tuple[int, dict[str, Any]]:
        async with self.session.post(
            self.gw.base + "/oauth/register",
            json={"redirect_uris": [redirect_uri], "client_name": "Security test", **body},
            headers=self.headers(),
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    async def token(self, form: dict[str, str], **headers: str) -> tuple[int, dict[str, Any], Any]:
        async with self.session.post(self.gw.base + "/oauth/token", data=form, headers=self.headers(**headers)) as resp:
            return resp.status, await resp.json(content_type=None), resp.headers

    def authorize_url(self, client_id: str, redirect_uri: str, challenge: str | None, **over: str | None) -> str:
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "scope": "read write",
            "resource": self.gw.url("o"),
            "state": "s-123",
        }
        params.update(over)
        return self.gw.base + "/oauth/authorize?" + urlencode({k: v for k, v in params.items() if v is not None})

    async def code(self, client_id: str, redirect_uri: str, api_key: str, **over: str | None) -> tuple[str, str]:
        """(code, verifier) through the whole page flow."""
        verifier, challenge = pkce()
        page = await self.open(self.authorize_url(client_id, redirect_uri, challenge, **over))
        assert page.status == 200, page.text
        consent = await self.sign_in(page, api_key)
        assert consent.status == 200 and "ticket" in consent.fields, consent.text
        done = await self.consent(consent)
        assert done.status == 302 and done.location is not None, done.text
        q = query_of(done.location)
        assert done.location.startswith(redirect_uri) and q["state"] == "s-123", done.location
        return q["code"], verifier

    async def tokens(self, client_id: str, redirect_uri: str, api_key: str, **over: str | None) -> dict[str, Any]:
        code, verifier = await self.code(client_id, redirect_uri, api_key, **over)
        resource = over.get("resource") or self.gw.url("o")
        status, body, _ = await self.token(
            {
                "grant_type": "authorization_code",
                "client_id": client_id,
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
                "resource": resource,
            }
        )
        assert status == 200, body
        return body
