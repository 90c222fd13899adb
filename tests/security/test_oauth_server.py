"""The built-in authorization server attacked the way one is (issue 19's security bar), through a real gateway
process with an SDK upstream: PKCE downgrade (plain, missing), code replay, redirect-URI mismatch and open
redirect, refresh-token reuse, cross-tenant and cross-route audience, the token of a revoked key, CSRF on the
sign-in and consent forms, and the per-address limits of registration and token endpoints. Every refusal is a
well-formed answer (an RFC 6749 error body or the refusal page, never a redirect to an unverified URI) and has
its audit record (server `_oauth`, stage `oauth`, the reason)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import pytest
import yaml

from gateway.auth.pgkeys import KeyRepository, NewKey
from gateway.db.scratch import scratch_database
from tests.e2e.test_identity_helpers import assert_refused, initialize_msg, post
from tests.harness import HMAC_SECRET, Gateway, Upstream, api_key, start_upstream
from tests.security.oauth_browser import KEYS, Browser, pkce, query_of, start_oauth_gateway

pytestmark = pytest.mark.e2e

UNAUTHENTICATED = -31001


class Env:
    def __init__(self, gw: Gateway, upstream: Upstream) -> None:
        self.gw = gw
        self.upstream = upstream
        self.redirect = "http://127.0.0.1:49152/callback"
        self._n = 0

    def address(self) -> str:
        self._n += 1
        return f"198.51.100.{self._n}"

    @property
    def audit(self) -> Path:
        return self.gw.workdir / "audit.jsonl"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("oauth-security")
    up = start_upstream(work, json_response=True)
    gw = start_oauth_gateway(
        work, f"http://127.0.0.1:{up.port}/mcp", register_per_minute=5, token_per_minute=20, authorize_per_minute=40
    )
    try:
        yield Env(gw, up)
    finally:
        gw.stop()
        up.proc.stop()


@pytest.fixture
async def browser(env: Env) -> AsyncIterator[Browser]:
    b = Browser(env.gw, env.address())
    try:
        yield b
    finally:
        await b.close()


async def client_id(b: Browser, redirect: str) -> str:
    status, body = await b.register(redirect)
    assert status == 201, body
    return str(body["client_id"])


async def oauth_audit(env: Env, address: str, reason: str, timeout: float = 10.0) -> dict[str, Any]:
    """The audit record of a refusal `reason` made to `address` (each test speaks from its own address)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(lambda: env.audit.read_text() if env.audit.exists() else "")
        for line in text.splitlines():
            if address in line and reason in line:
                rec: dict[str, Any] = json.loads(line)
                if rec.get("client_ip") == address and rec.get("reason") == reason:
                    assert rec["server"] == "_oauth" and rec["stage"] == "oauth", rec
                    return rec
        await asyncio.sleep(0.1)
    raise AssertionError(f"no audit record of {reason} for {address}")


def assert_oauth_error(status: int, body: dict[str, Any], headers: Any, want_status: int, error: str) -> None:
    assert status == want_status, body
    assert body["error"] == error and isinstance(body["error_description"], str), body
    assert headers["Cache-Control"] == "no-store"


def token_form(cid: str, code: str, redirect: str, verifier: str | None) -> dict[str, str]:
    form = {"grant_type": "authorization_code", "client_id": cid, "code": code, "redirect_uri": redirect}
    if verifier is not None:
        form["code_verifier"] = verifier
    return form


@pytest.mark.parametrize(("method", "reason"), [("plain", "pkce_not_s256"), (None, "pkce_not_s256")])
async def test_pkce_downgrade_to_plain_is_refused(env: Env, browser: Browser, method: str | None, reason: str) -> None:
    cid = await client_id(browser, env.redirect)
    verifier = pkce()[0]
    # `plain` sends the verifier itself as the challenge: what a downgrade attack wants accepted
    page = await browser.open(browser.authorize_url(cid, env.redirect, verifier, code_challenge_method=method))
    assert page.status == 302 and page.location is not None
    q = query_of(page.location)
    assert page.location.startswith(env.redirect) and q["error"] == "invalid_request" and "code" not in q
    assert q["state"] == "s-123"
    await oauth_audit(env, browser.address, reason)


async def test_pkce_missing_is_refused_at_both_ends(env: Env, browser: Browser) -> None:
    cid = await client_id(browser, env.redirect)
    page = await browser.open(browser.authorize_url(cid, env.redirect, None))
    assert page.status == 302 and query_of(page.location or "")["error"] == "invalid_request"
    await oauth_audit(env, browser.address, "pkce_missing")
    # a code obtained with PKCE cannot be redeemed without the verifier
    code, _ = await browser.code(cid, env.redirect, env.gw.keys["rw"])
    status, body, headers = await browser.token(token_form(cid, code, env.redirect, None))
    assert_oauth_error(status, body, headers, 400, "invalid_grant")
    assert body["reason"] == "pkce_missing"


async def test_wrong_verifier_is_refused(env: Env, browser: Browser) -> None:
    cid = await client_id(browser, env.redirect)
    code, _ = await browser.code(cid, env.redirect, env.gw.keys["rw"])
    status, body, headers = await browser.token(token_form(cid, code, env.redirect, pkce()[0]))
    assert_oauth_error(status, body, headers, 400, "invalid_grant")
    await oauth_audit(env, browser.address, "pkce_failed")


async def test_code_replay_is_refused_and_revokes_the_grant(env: Env, browser: Browser) -> None:
    cid = await client_id(browser, env.redirect)
    code, verifier = await browser.code(cid, env.redirect, env.gw.keys["rw"])
    status, first, _ = await browser.token(token_form(cid, code, env.redirect, verifier))
    assert status == 200, first
    status, body, headers = await browser.token(token_form(cid, code, env.redirect, verifier))
    assert_oauth_error(status, body, headers, 400, "invalid_grant")
    assert body["reason"] == "code_replayed"
    await oauth_audit(env, browser.address, "code_replayed")
    # what the code bought is gone: its refresh token, and (this process) its access token
    status, body, _ = await browser.token(
        {"grant_type": "refresh_token", "client_id": cid, "refresh_token": first["refresh_token"]}
    )
    assert status == 400 and body["reason"] == "refresh_revoked", body
    async with aiohttp.ClientSession() as http:
        ans = await post(http, env.gw.url("o"), initialize_msg(), {"Authorization": f"Bearer {first['access_token']}"})
    assert_refused(ans, 401, UNAUTHENTICATED, "token_revoked")


async def test_unregistered_redirect_is_never_followed(env: Env, browser: Browser) -> None:
    cid = await client_id(browser, env.redirect)
    for evil in ("https://evil.test/steal", env.redirect + "/../../steal", "http://127.0.0.1:49153/callback"):
        page = await browser.open(browser.authorize_url(cid, evil, pkce()[1]))
        # a page, not a redirect: an unverified redirect URI is the open redirect
        assert page.status == 400 and page.location is None, page.text
        assert page.headers["Content-Type"].startswith("text/html") and "evil" not in page.text.split("<body>")[0]
    await oauth_audit(env, browser.address, "redirect_uri_mismatch")
    # an unknown client is refused the same way (nothing to redirect to)
    page = await browser.open(browser.authorize_url("nosuchclient", env.redirect, pkce()[1]))
    assert page.status == 400 and page.location is None
    await oauth_audit(env, browser.address, "unknown_client")


async def test_a_parameter_given_twice_is_refused(env: Env, browser: Browser) -> None:
    """RFC 6749 3.1: a second `redirect_uri` (or `resource`, `code`) for another component to read is an error at
    the authorization and token endpoints, never a choice the gateway makes for the caller."""
    cid = await client_id(browser, env.redirect)
    url = browser.authorize_url(cid, env.redirect, pkce()[1]) + "&" + urlencode({"redirect_uri": "https://evil.test/"})
    page = await browser.open(url)
    # a page, not a redirect: which of the two URIs would it go to?
    assert page.status == 400 and page.location is None, page.text
    assert "evil.test" not in page.text
    await oauth_audit(env, browser.address, "repeated_parameter")
    # a second `resource` (an audience for another route) is refused the same way
    url = browser.authorize_url(cid, env.redirect, pkce()[1]) + "&" + urlencode({"resource": env.gw.url("other")})
    page = await browser.open(url)
    assert page.status == 400 and page.location is None, page.text
    code, verifier = await browser.code(cid, env.redirect, env.gw.keys["rw"])
    form = [*token_form(cid, code, env.redirect, verifier).items(), ("code", "second-code")]
    async with browser.session.post(env.gw.base + "/oauth/token", data=form, headers=browser.headers()) as resp:
        status, body, headers = resp.status, await resp.json(content_type=None), resp.headers
    assert_oauth_error(status, body, headers, 400, "invalid_request")
    assert body["reason"] == "repeated_parameter"
    # the code was not spent by the refused request: redeemed once, properly, it still works
    status, body, _ = await browser.token(token_form(cid, code, env.redirect, verifier))
    assert status == 200 and body["token_type"].lower() == "bearer", body


async def test_registration_refuses_redirects_outside_policy(env: Env, browser: Browser) -> None:
    for bad, reason in (
        ("https://evil.test/cb", "redirect_not_allowed"),
        ("javascript:alert(1)//", "bad_redirect_uri"),
        ("http://evil.test/cb", "bad_redirect_uri"),
        ("https://claude.ai/api/mcp/auth_callback#x", "bad_redirect_uri"),
    ):
        status, body = await browser.register(bad)
        assert status == 400 and body["error"] == "invalid_redirect_uri", (bad, body)
        assert body["reason"] == reason
    await oauth_audit(env, browser.address, "redirect_not_allowed")


async def test_redirect_uri_mismatch_at_token_endpoint(env: Env, browser: Browser) -> None:
    other = "http://127.0.0.1:49154/cb"
    status, body = await browser.register(env.redirect, redirect_uris=[env.redirect, other])
    assert status == 201, body
    cid = body["client_id"]
    code, verifier = await browser.code(cid, env.redirect, env.gw.keys["rw"])
    status, body, headers = await browser.token(token_form(cid, code, other, verifier))
    assert_oauth_error(status, body, headers, 400, "invalid_grant")
    await oauth_audit(env, browser.address, "redirect_uri_mismatch")


async def test_refresh_token_reuse_revokes_the_family(env: Env, browser: Browser) -> None:
    cid = await client_id(browser, env.redirect)
    first = await browser.tokens(cid, env.redirect, env.gw.keys["rw"])
    refresh = {"grant_type": "refresh_token", "client_id": cid, "refresh_token": first["refresh_token"]}
    status, second, _ = await browser.token(refresh)
    assert status == 200 and second["refresh_token"] != first["refresh_token"], second
    async with aiohttp.ClientSession() as http:
        ok = await post(http, env.gw.url("o"), initialize_msg(), {"Authorization": f"Bearer {second['access_token']}"})
        assert ok.status == 200, ok.body
        # the old refresh token again: an attacker (or the victim) holds a copy; the whole grant goes
        status, body, headers = await browser.token(refresh)
        assert_oauth_error(status, body, headers, 400, "invalid_grant")
        assert body["reason"] == "refresh_reused"
        await oauth_audit(env, browser.address, "refresh_reused")
        status, body, _ = await browser.token({**refresh, "refresh_token": second["refresh_token"]})
        assert status == 400 and body["reason"] == "refresh_revoked", body
        ans = await post(http, env.gw.url("o"), initialize_msg(), {"Authorization": f"Bearer {second['access_token']}"})
        assert_refused(ans, 401, UNAUTHENTICATED, "token_revoked")
        assert 'error="invalid_token"' in ans.headers["WWW-Authenticate"]


async def test_audience_binds_route_and_tenant(env: Env, browser: Browser) -> None:
    cid = await client_id(browser, env.redirect)
    acme = await browser.tokens(cid, env.redirect, env.gw.keys["rw"])
    globex = await browser.tokens(cid, env.redirect, env.gw.keys["gx"], resource=env.gw.url("g"))
    async with aiohttp.ClientSession() as http:
        own = await post(http, env.gw.url("o"), initialize_msg(), {"Authorization": f"Bearer {acme['access_token']}"})
        assert own.status == 200, own.body
        # another route of the same tenant: the token names /mcp/o only (RFC 8707)
        ans = await post(http, env.gw.url("p"), initialize_msg(), {"Authorization": f"Bearer {acme['access_token']}"})
        assert_refused(ans, 401, UNAUTHENTICATED, "wrong_audience")
        # another tenant's route, both ways
        ans = await post(http, env.gw.url("g"), initialize_msg(), {"Authorization": f"Bearer {acme['access_token']}"})
        assert_refused(ans, 401, UNAUTHENTICATED, "wrong_audience")
        ans = await post(http, env.gw.url("o"), initialize_msg(), {"Authorization": f"Bearer {globex['access_token']}"})
        assert_refused(ans, 401, UNAUTHENTICATED, "wrong_audience")
        # a route without `oauth` takes no such token at all
        ans = await post(
            http, env.gw.url("keysonly"), initialize_msg(), {"Authorization": f"Bearer {acme['access_token']}"}
        )
        assert_refused(ans, 401, UNAUTHENTICATED, "credential_not_accepted")
    # and an acme key cannot even sign in for globex's route
    page = await browser.open(browser.authorize_url(cid, env.redirect, pkce()[1], resource=env.gw.url("g")))
    refused = await browser.sign_in(page, env.gw.keys["rw"])
    assert refused.status == 403 and "ticket" not in refused.fields
    await oauth_audit(env, browser.address, "server_not_allowed")
    # nor can a refresh move a grant to another route
    status, body, _ = await browser.token(
        {
            "grant_type": "refresh_token",
            "client_id": cid,
            "refresh_token": acme["refresh_token"],
            "resource": env.gw.url("p"),
        }
    )
    assert status == 400 and body["error"] == "invalid_target", body


async def test_scopes_never_exceed_the_key(env: Env, browser: Browser) -> None:
    cid = await client_id(browser, env.redirect)
    body = await browser.tokens(cid, env.redirect, env.gw.keys["ro"], scope="read write admin")
    assert body["scope"] == "read"
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        ans = await post(http, env.gw.url("o"), initialize_msg(), headers)
        assert ans.status == 200, ans.body
        sid = ans.headers["Mcp-Session-Id"]
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": 1, "b": 2}},
        }
        ans = await post(http, env.gw.url("o"), call, headers, session_id=sid)
        assert ans.body["error"]["data"]["reason"] == "scope_denied", ans.body


async def test_token_of_a_revoked_key_is_refused(env: Env, browser: Browser) -> None:
    cid = await client_id(browser, env.redirect)
    body = await browser.tokens(cid, env.redirect, env.gw.keys["victim"])
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    async with aiohttp.ClientSession() as http:
        ok = await post(http, env.gw.url("o"), initialize_msg(), headers)
        assert ok.status == 200, ok.body
        entries = []
        for kid, fields in KEYS.items():
            digest = hmac.new(HMAC_SECRET.encode(), env.gw.keys[kid].encode(), hashlib.sha256).hexdigest()
            entries.append({"id": kid, "hash": digest, **fields, "revoked": kid == "victim"})
        env.gw.write_policies({"keys.yaml": yaml.safe_dump({"keys": entries})})
        # the reload is picked up by polling the files; wait for it, bounded (no duration is asserted)
        deadline = time.monotonic() + 20
        ans = ok
        while time.monotonic() < deadline:
            ans = await post(http, env.gw.url("o"), initialize_msg(), headers)
            if ans.status != 200:
                break
            await asyncio.sleep(0.2)
        assert_refused(ans, 401, UNAUTHENTICATED, "key_revoked")
    status, refused, headers2 = await browser.token(
        {"grant_type": "refresh_token", "client_id": cid, "refresh_token": body["refresh_token"]}
    )
    assert_oauth_error(status, refused, headers2, 400, "invalid_grant")
    assert refused["reason"] == "key_revoked"
    await oauth_audit(env, browser.address, "key_revoked")


async def test_csrf_on_sign_in_and_consent(env: Env) -> None:
    victim, attacker = Browser(env.gw, env.address()), Browser(env.gw, env.address())
    try:
        cid = await client_id(victim, env.redirect)
        page = await victim.open(victim.authorize_url(cid, env.redirect, pkce()[1]))
        assert page.status == 200 and page.headers["X-Frame-Options"] == "DENY"
        # a forged sign-in: no CSRF token, a made-up one, or one of another browser
        for csrf in (None, "0" * 64):
            fields = {k: v for k, v in page.fields.items() if k != "csrf"}
            if csrf is not None:
                fields["csrf"] = csrf
            refused = await victim.submit("/oauth/authorize", {**fields, "api_key": env.gw.keys["rw"]})
            assert refused.status == 403 and "ticket" not in refused.fields
        await oauth_audit(env, victim.address, "csrf_failed")
        consent = await victim.sign_in(page, env.gw.keys["rw"])
        assert consent.status == 200 and "Security test" in consent.text and "<code>write</code>" in consent.text
        # the attacker replays the victim's consent form from its own browser (its own cookie): refused
        other = await attacker.open(attacker.authorize_url(cid, env.redirect, pkce()[1]))
        forged = await attacker.submit(
            "/oauth/consent", {"csrf": other.fields["csrf"], "ticket": consent.fields["ticket"], "decision": "approve"}
        )
        assert forged.status == 403 and forged.location is None
        await oauth_audit(env, attacker.address, "bad_ticket")
        # a cross-site POST carries no cookie at all (SameSite=Strict): refused too
        async with (
            aiohttp.ClientSession() as bare,
            bare.post(
                env.gw.base + "/oauth/consent",
                data={**consent.fields, "decision": "approve"},
                headers={"X-Forwarded-For": attacker.address},
                allow_redirects=False,
            ) as resp,
        ):
            assert resp.status == 403 and "Location" not in resp.headers
        # the victim's own consent still works
        done = await victim.consent(consent)
        assert done.status == 302 and "code" in query_of(done.location or "")
    finally:
        await victim.close()
        await attacker.close()


async def test_registration_and_token_endpoints_are_rate_limited(env: Env, browser: Browser) -> None:
    statuses = [(await browser.register(env.redirect))[0] for _ in range(7)]
    assert statuses[:5] == [201] * 5 and statuses[-1] == 429, statuses
    async with browser.session.post(
        env.gw.base + "/oauth/register", json={"redirect_uris": [env.redirect]}, headers=browser.headers()
    ) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        assert body["error"] == "temporarily_unavailable" and body["reason"] == "rate_limited"
    await oauth_audit(env, browser.address, "rate_limited")
    results = [(await browser.token({"grant_type": "refresh_token", "client_id": "x", "refresh_token": "y"}))[0]]
    for _ in range(25):
        results.append(
            (await browser.token({"grant_type": "refresh_token", "client_id": "x", "refresh_token": "y"}))[0]
        )
    assert results[0] == 401 and results[-1] == 429, results
    # another address is not affected
    other = Browser(env.gw, env.address())
    try:
        assert (await other.register(env.redirect))[0] == 201
    finally:
        await other.close()


async def test_discovery_documents(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(env.gw.base + "/.well-known/oauth-protected-resource/mcp/o") as r:
            prm = await r.json()
        async with http.get(env.gw.base + "/.well-known/oauth-protected-resource/mcp/keysonly") as r:
            assert r.status == 404
        async with http.get(env.gw.base + "/.well-known/oauth-authorization-server") as r:
            meta = await r.json()
        async with http.get(meta["jwks_uri"]) as r:
            jwks = await r.json()
    assert prm["resource"] == env.gw.url("o") and prm["authorization_servers"] == [env.gw.base]
    assert meta["issuer"] == env.gw.base and meta["code_challenge_methods_supported"] == ["S256"]
    assert {k["kty"] for k in jwks["keys"]} == {"EC"} and all("d" not in k for k in jwks["keys"])


async def test_postgres_state_and_a_revoked_postgres_key(tmp_path: Path, postgres_dsn: str) -> None:
    """The same server with its state in PostgreSQL and a key from the PostgreSQL key store: the flow works across
    the store, a replayed refresh token is caught there, and revoking the key in the database (as another replica
    or the CLI would) refuses its token within `api_keys.cache_seconds`."""
    async with scratch_database(postgres_dsn, prefix="mgw_oauth_e2e_") as dsn:
        up = start_upstream(tmp_path, json_response=True)
        raw, digest = api_key("pgkey")
        conn = await asyncpg.connect(dsn)
        try:
            await KeyRepository(conn).create(NewKey(id="pgkey", hash=digest, tenant="acme", scopes=["read", "write"]))
        finally:
            await conn.close()
        gw = start_oauth_gateway(
            tmp_path / "gw",
            f"http://127.0.0.1:{up.port}/mcp",
            extra_config={"postgres": {"dsn": dsn}, "api_keys": {"cache_seconds": 0.5}},
        )
        browser = Browser(gw, "192.0.2.50")
        try:
            cid = await client_id(browser, "http://127.0.0.1:49155/cb")
            first = await browser.tokens(cid, "http://127.0.0.1:49155/cb", raw)
            refresh = {"grant_type": "refresh_token", "client_id": cid, "refresh_token": first["refresh_token"]}
            status, second, _ = await browser.token(refresh)
            assert status == 200, second
            status, body, _ = await browser.token(refresh)
            assert status == 400 and body["reason"] == "refresh_reused", body
            conn = await asyncpg.connect(dsn)
            try:
                revoked = await conn.fetchval(
                    "SELECT count(*) FROM mgw_oauth_refresh_tokens WHERE revoked_at IS NOT NULL"
                )
            finally:
                await conn.close()
            assert revoked == 2  # the family: the reused token and its successor
            third = await browser.tokens(cid, "http://127.0.0.1:49155/cb", raw)
            headers = {"Authorization": f"Bearer {third['access_token']}"}
            async with aiohttp.ClientSession() as http:
                ok = await post(http, gw.url("o"), initialize_msg(), headers)
                assert ok.status == 200, ok.body
                conn = await asyncpg.connect(dsn)
                try:
                    assert await KeyRepository(conn).revoke("pgkey")
                finally:
                    await conn.close()
                deadline = time.monotonic() + 20
                ans = ok
                while time.monotonic() < deadline:
                    ans = await post(http, gw.url("o"), initialize_msg(), headers)
                    if ans.status != 200:
                        break
                    await asyncio.sleep(0.2)
                assert_refused(ans, 401, UNAUTHENTICATED, "key_revoked")
        finally:
            await browser.close()
            gw.stop()
            up.proc.stop()
