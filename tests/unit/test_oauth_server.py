"""The built-in authorization server's protocol logic without HTTP (gateway/oauth/server.py over the in-memory
store): the happy path and each refusal the security suite also drives through a real gateway process."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.auth.apikeys import hash_key
from gateway.auth.principal import Principal
from gateway.errors import GatewayError
from gateway.oauth.config import OAuthSettings
from gateway.oauth.errors import OAuthError
from gateway.oauth.keys import KeyResolver
from gateway.oauth.server import AuthorizeRequest, OAuthServer, RedirectableError
from gateway.oauth.signing import from_pem, generate_pem
from gateway.oauth.store import MemoryStore
from gateway.oauth.tokens import AccessTokens
from gateway.policy.snapshot import Snapshot
from gateway.testing import snapshot

pytestmark = pytest.mark.unit

PUBLIC = "http://gw.test"
SECRET = b"h" * 32
REDIRECT = "http://127.0.0.1:5555/callback"
KEY_RW = "mgw_rw_" + "a" * 40
KEY_RO = "mgw_ro_" + "b" * 40
KEY_GLOBEX = "mgw_gx_" + "c" * 40


def build_snapshot(revoked: bool = False) -> Snapshot:
    up = [{"url": "http://127.0.0.1:1/mcp"}]
    return snapshot(
        {
            "o": {"upstreams": up, "owner": "acme", "auth": {"methods": ["api_key", "oauth"]}},
            "p": {"upstreams": up, "owner": "acme", "auth": {"methods": ["api_key", "oauth"]}},
            "keysonly": {"upstreams": up, "owner": "acme"},
            "g": {"upstreams": up, "owner": "globex", "auth": {"methods": ["oauth"]}},
        },
        tenants={"acme": {}, "globex": {}},
        keys=[
            {
                "id": "rw",
                "hash": hash_key(SECRET, KEY_RW),
                "tenant": "acme",
                "scopes": ["read", "write"],
                "revoked": revoked,
            },
            {"id": "ro", "hash": hash_key(SECRET, KEY_RO), "tenant": "acme", "scopes": ["read"]},
            {"id": "gx", "hash": hash_key(SECRET, KEY_GLOBEX), "tenant": "globex", "scopes": ["read", "write"]},
        ],
    )


class Env:
    def __init__(self, clock: Callable[[], float] = time.time, **settings: Any) -> None:
        self.snap = build_snapshot()
        self.settings = OAuthSettings.model_validate({"enabled": True, **settings})
        self.tokens = AccessTokens(from_pem(generate_pem()), PUBLIC, 300)
        self.store = MemoryStore(clock)
        self.server = OAuthServer(
            self.settings,
            PUBLIC,
            PUBLIC,
            self.store,
            self.tokens,
            KeyResolver(SECRET, None, lambda: self.snap),
            lambda: self.snap,
        )

    async def lookup(self, key_id: str) -> Any:
        return await self.server.keys.by_id(key_id)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def params(client_id: str, challenge: str, **over: str | None) -> dict[str, str]:
    out: dict[str, str | None] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "scope": "read write",
        "resource": f"{PUBLIC}/mcp/o",
        "state": "st8",
    }
    out.update(over)
    return {k: v for k, v in out.items() if v is not None}


async def register(env: Env, **body: Any) -> dict[str, Any]:
    return await env.server.register({"redirect_uris": [REDIRECT], "client_name": "Test", **body})


def query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def code_for(
    env: Env, client_id: str, key: str = KEY_RW, **over: str | None
) -> tuple[str, str, AuthorizeRequest]:
    verifier, challenge = pkce()
    req = await env.server.authorize_request(params(client_id, challenge, **over))
    rec = await env.server.sign_in(req, key, "127.0.0.1")
    q = query(await env.server.approve(req, rec))
    assert q["state"] == "st8" and q["iss"] == PUBLIC
    return q["code"], verifier, req


def token_form(client_id: str, code: str, verifier: str | None, **over: str) -> dict[str, str]:
    form = {"grant_type": "authorization_code", "client_id": client_id, "code": code, "redirect_uri": REDIRECT}
    if verifier is not None:
        form["code_verifier"] = verifier
    form.update(over)
    return form


async def refused(coro: Any) -> OAuthError:
    with pytest.raises(OAuthError) as info:
        await coro
    return info.value


async def test_full_flow_token_refresh_and_principal() -> None:
    env = Env()
    client = await register(env)
    assert client["token_endpoint_auth_method"] == "none" and "client_secret" not in client
    code, verifier, _ = await code_for(env, client["client_id"])
    body, grant = await env.server.token(token_form(client["client_id"], code, verifier), None, "127.0.0.1")
    assert body["token_type"] == "Bearer" and body["scope"] == "read write" and grant.tenant == "acme"
    principal: Principal = await env.tokens.verify(body["access_token"], f"{PUBLIC}/mcp/o", "127.0.0.1", env.lookup)
    assert (principal.tenant, principal.key_id, principal.method) == ("acme", "rw", "jwt")
    assert principal.scopes == frozenset({"read", "write"})
    refresh = {"grant_type": "refresh_token", "client_id": client["client_id"], "refresh_token": body["refresh_token"]}
    body2, _ = await env.server.token(refresh, None, "127.0.0.1")
    assert body2["refresh_token"] != body["refresh_token"]
    # the rotated token came back: reuse; the whole family goes, the new refresh token too
    err = await refused(env.server.token(refresh, None, "127.0.0.1"))
    assert (err.error, err.reason) == ("invalid_grant", "refresh_reused")
    refresh["refresh_token"] = body2["refresh_token"]
    err = await refused(env.server.token(refresh, None, "127.0.0.1"))
    assert err.reason == "refresh_revoked"
    # and this process refuses the family's access tokens at once
    with pytest.raises(GatewayError) as info:
        await env.tokens.verify(body2["access_token"], f"{PUBLIC}/mcp/o", "127.0.0.1", env.lookup)
    assert info.value.reason == "token_revoked"


async def test_scopes_never_exceed_the_key() -> None:
    env = Env()
    client = await register(env)
    code, verifier, _ = await code_for(env, client["client_id"], KEY_RO)
    body, _ = await env.server.token(token_form(client["client_id"], code, verifier), None, "127.0.0.1")
    assert body["scope"] == "read"
    p = await env.tokens.verify(body["access_token"], f"{PUBLIC}/mcp/o", "127.0.0.1", env.lookup)
    assert p.scopes == frozenset({"read"})


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"code_challenge_method": "plain"}, "pkce_not_s256"),
        ({"code_challenge_method": None}, "pkce_not_s256"),
        ({"code_challenge": None}, "pkce_missing"),
        ({"code_challenge": "short"}, "pkce_malformed"),
        ({"response_type": "token"}, "bad_response_type"),
        ({"scope": "read superuser"}, "bad_scope"),
        ({"resource": None}, "bad_resource"),
        ({"resource": f"{PUBLIC}/mcp/keysonly"}, "bad_resource"),
        ({"resource": "https://evil.test/mcp/o"}, "bad_resource"),
    ],
)
async def test_authorization_request_refusals_redirect(over: dict[str, str | None], reason: str) -> None:
    env = Env()
    client = await register(env)
    with pytest.raises(RedirectableError) as info:
        await env.server.authorize_request(params(client["client_id"], pkce()[1], **over))
    assert info.value.err.reason == reason
    assert env.server.error_location(info.value).startswith(REDIRECT + "?error=")


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"redirect_uri": "https://evil.test/cb"}, "redirect_uri_mismatch"),
        ({"redirect_uri": REDIRECT + "/../x"}, "redirect_uri_mismatch"),
        ({"client_id": "nobody"}, "unknown_client"),
    ],
)
async def test_unverified_redirects_are_never_followed(over: dict[str, str], reason: str) -> None:
    env = Env()
    client = await register(env)
    err = await refused(env.server.authorize_request({**params(client["client_id"], pkce()[1]), **over}))
    assert err.reason == reason


async def test_token_endpoint_refusals() -> None:
    env = Env()
    client = await register(env)
    cid = client["client_id"]
    code, verifier, _ = await code_for(env, cid)
    assert (await refused(env.server.token(token_form(cid, code, None), None, "ip"))).reason == "pkce_missing"
    # the failed attempt consumed the code: it was presented, whatever else was wrong
    assert (await refused(env.server.token(token_form(cid, code, verifier), None, "ip"))).reason == "code_replayed"
    code, verifier, _ = await code_for(env, cid)
    err = await refused(env.server.token(token_form(cid, code, secrets.token_urlsafe(48)), None, "ip"))
    assert err.reason == "pkce_failed"
    code, verifier, _ = await code_for(env, cid)
    err = await refused(
        env.server.token(token_form(cid, code, verifier, redirect_uri="http://127.0.0.1:1/x"), None, "ip")
    )
    assert err.reason == "redirect_uri_mismatch"
    code, verifier, _ = await code_for(env, cid)
    other = await register(env)
    err = await refused(env.server.token(token_form(other["client_id"], code, verifier), None, "ip"))
    assert err.reason == "client_mismatch"
    code, verifier, _ = await code_for(env, cid)
    err = await refused(env.server.token(token_form(cid, code, verifier, resource=f"{PUBLIC}/mcp/p"), None, "ip"))
    assert err.reason == "resource_mismatch"


async def test_code_replay_revokes_what_the_code_bought() -> None:
    env = Env()
    cid = (await register(env))["client_id"]
    code, verifier, _ = await code_for(env, cid)
    body, _ = await env.server.token(token_form(cid, code, verifier), None, "ip")
    err = await refused(env.server.token(token_form(cid, code, verifier), None, "ip"))
    assert err.reason == "code_replayed"
    refresh = {"grant_type": "refresh_token", "client_id": cid, "refresh_token": body["refresh_token"]}
    assert (await refused(env.server.token(refresh, None, "ip"))).reason == "refresh_revoked"


async def test_audience_is_one_route_and_tenant() -> None:
    env = Env()
    cid = (await register(env))["client_id"]
    code, verifier, _ = await code_for(env, cid)
    body, _ = await env.server.token(token_form(cid, code, verifier), None, "ip")
    with pytest.raises(GatewayError) as info:
        await env.tokens.verify(body["access_token"], f"{PUBLIC}/mcp/p", "ip", env.lookup)
    assert info.value.reason == "wrong_audience"
    # a key of acme cannot sign in for globex's route
    verifier, challenge = pkce()
    req = await env.server.authorize_request(params(cid, challenge, resource=f"{PUBLIC}/mcp/g"))
    err = await refused(env.server.sign_in(req, KEY_RW, "ip"))
    assert err.reason == "server_not_allowed"


async def test_revoked_key_revokes_its_tokens() -> None:
    env = Env()
    cid = (await register(env))["client_id"]
    code, verifier, _ = await code_for(env, cid)
    body, _ = await env.server.token(token_form(cid, code, verifier), None, "ip")
    env.snap = build_snapshot(revoked=True)
    with pytest.raises(GatewayError) as info:
        await env.tokens.verify(body["access_token"], f"{PUBLIC}/mcp/o", "ip", env.lookup)
    assert info.value.reason == "key_revoked"
    refresh = {"grant_type": "refresh_token", "client_id": cid, "refresh_token": body["refresh_token"]}
    assert (await refused(env.server.token(refresh, None, "ip"))).reason == "key_revoked"
    assert (
        await refused(env.server.sign_in(await env.server.authorize_request(params(cid, pkce()[1])), KEY_RW, "ip"))
    ).reason == "key_revoked"


async def test_registration_policies() -> None:
    env = Env(registration="allowed_redirect_uris")
    assert (await register(env))["client_id"]
    err = await refused(register(env, redirect_uris=["https://evil.test/cb"]))
    assert err.reason == "redirect_not_allowed"
    for bad in ("javascript:alert(1)", "http://evil.test/cb", "https://a.test/cb#frag", "https://u@a.test/cb"):
        err = await refused(Env(registration="open").server.register({"redirect_uris": [bad]}))
        assert err.error == "invalid_redirect_uri", bad
    assert (await Env(registration="open").server.register({"redirect_uris": ["https://any.test/cb"]}))["client_id"]
    closed = Env(registration="preregistered", clients=[{"client_id": "ide", "redirect_uris": [REDIRECT]}])
    assert (await refused(register(closed))).reason == "registration_closed"
    assert "registration_endpoint" not in closed.server.metadata()
    code, _, _ = await code_for(closed, "ide")
    assert code
    full = Env(max_clients=1)
    await register(full)
    assert (await refused(register(full))).reason == "client_limit"


async def test_a_registration_flood_ages_out_and_approved_clients_stay() -> None:
    now = [1000.0]
    env = Env(clock=lambda: now[0], max_clients=3, unclaimed_client_seconds=600)
    kept = (await register(env))["client_id"]
    await code_for(env, kept)  # a user approved it: claimed
    now[0] += 1
    flood = [(await register(env))["client_id"] for _ in range(2)]
    # full, and the flood's registrations are young: refused as before
    assert (await refused(register(env))).reason == "client_limit"
    now[0] += 601
    # the unclaimed ones aged out: registration works again, the approved client is still there
    fresh = (await register(env))["client_id"]
    assert await env.server.client(kept) is not None and await env.server.client(fresh) is not None
    assert [await env.server.client(c) for c in flood] == [None, None]
    # and its users go on signing in with it
    assert (await code_for(env, kept))[0]


async def test_confidential_client_must_authenticate() -> None:
    env = Env()
    client = await register(env, token_endpoint_auth_method="client_secret_post")
    cid, secret = client["client_id"], client["client_secret"]
    code, verifier, _ = await code_for(env, cid)
    err = await refused(env.server.token(token_form(cid, code, verifier), None, "ip"))
    assert (err.status, err.reason) == (401, "bad_client_auth")
    code, verifier, _ = await code_for(env, cid)
    body, _ = await env.server.token(token_form(cid, code, verifier, client_secret=secret), None, "ip")
    assert body["access_token"]


async def test_revocation_revokes_the_family() -> None:
    env = Env()
    cid = (await register(env))["client_id"]
    code, verifier, _ = await code_for(env, cid)
    body, _ = await env.server.token(token_form(cid, code, verifier), None, "ip")
    other = (await register(env))["client_id"]
    # another client's revocation is answered like success and changes nothing
    assert await env.server.revoke({"client_id": other, "token": body["refresh_token"]}, None) is None
    await env.tokens.verify(body["access_token"], f"{PUBLIC}/mcp/o", "ip", env.lookup)
    assert await env.server.revoke({"client_id": cid, "token": body["refresh_token"]}, None) is not None
    with pytest.raises(GatewayError):
        await env.tokens.verify(body["access_token"], f"{PUBLIC}/mcp/o", "ip", env.lookup)
