"""JWT routes through a real gateway process, with a real JWKS endpoint (aiohttp, in a thread of the test):
the refusal table (missing, expired, not yet valid, another route's audience, wrong issuer, `alg: none`, HS/RS
confusion, tampered, unknown kid), RS256/ES256/EdDSA/HS256 acceptance, the OAuth resource-server face (RFC 9728
metadata, 401/403 challenges only on OAuth routes), and a JWKS key rotation picked up without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from tests.e2e.test_identity_helpers import (
    POLICY_REFUSAL,
    assert_refused,
    audit_record,
    initialize_msg,
    post,
    rpc,
    start_recorder,
)
from tests.harness import Gateway, ThreadedApp, free_port, start_gateway

pytestmark = pytest.mark.e2e

ISSUER = "https://issuer.test"
HS_SECRET = "hs-route-secret-0123456789abcdef0123456789"
UNAUTHENTICATED = -31001
FORBIDDEN = -31403


def _jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
    data.update({"kid": kid, "alg": alg, "use": "sig"})
    return data


@dataclass
class JwksServer:
    """Serves `/jwks` from its own event loop in a thread, so it outlives every test's loop."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"

    def start(self) -> None:
        async def jwks(_: web.Request) -> web.Response:
            self.fetches += 1
            return web.json_response({"keys": list(self.keys)})

        self._app = ThreadedApp(self.port, lambda app: app.router.add_get("/jwks", jwks))
        self._app.start()

    def stop(self) -> None:
        self._app.stop()


@dataclass
class Env:
    gw: Gateway
    jwks: JwksServer
    audit: Path
    signers: dict[str, tuple[Any, str]]  # kid -> (private key, alg)

    def token(self, route: str = "rs", kid: str = "rsa1", **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": self.gw.url(route),
            "sub": "alice",
            "tenant": "acme",
            "scope": "read write",
            "iat": now,
            "exp": now + 300,
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        key, alg = self.signers[kid]
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("identity-jwt")
    signers: dict[str, tuple[Any, str]] = {
        "rsa1": (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        "ec1": (ec.generate_private_key(ec.SECP256R1()), "ES256"),
        "ed1": (ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
        "rsa2": (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),  # rotated in later
        "ghost": (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),  # never published
    }
    jwks = JwksServer(keys=[_jwk(signers[k][0], k, signers[k][1]) for k in ("rsa1", "ec1", "ed1")])
    jwks.start()
    up, _ = start_recorder(work, json_response=True)
    jwt_route = {
        "methods": ["jwt"],
        "jwt": {
            "issuer": ISSUER,
            "jwks_url": jwks.url,
            "algorithms": ["RS256", "ES256", "EdDSA"],
            "authorization_servers": [ISSUER],
            "leeway_seconds": 5,
            "jwks_min_refresh_seconds": 1,
        },
    }
    server = {"upstreams": [{"url": up.url}], "owner": "acme"}
    policies: dict[str, Any] = {
        "servers.yaml": {
            "servers": {
                "rs": {**server, "auth": jwt_route},
                "other": {**server, "auth": jwt_route},
                "hs": {
                    **server,
                    "auth": {
                        "methods": ["jwt", "api_key"],
                        "jwt": {"issuer": ISSUER, "algorithms": ["HS256"], "hs_secret": {"env": "HS_SECRET"}},
                    },
                },
                "keys": server,
            }
        },
        "tenants.yaml": {"tenants": {"acme": {"servers": ["rs", "other", "hs", "keys"]}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {"ddos": {"enabled": False}, "tiers": {}},
        "access.yaml": {"rules": []},
    }
    gw = start_gateway(
        work / "gw",
        policies,
        keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}},
        port=free_port(),
        env={"HS_SECRET": HS_SECRET},
    )
    try:
        yield Env(gw, jwks, work / "gw" / "audit.jsonl", signers)
    finally:
        gw.stop()
        up.stop()
        jwks.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs_signed_with_public_key(env: Env) -> str:
    """The classic confusion attack: HS256 'signed' with the RSA public key the verifier knows."""
    pem = (
        env.signers["rsa1"][0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    good = jwt.decode(env.token(), options={"verify_signature": False})
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}).encode())
    body = _b64(json.dumps(good).encode())
    sig = _b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def _tampered(env: Env) -> str:
    head, _, sig = env.token(scope="read").split(".")
    claims = jwt.decode(env.token(), options={"verify_signature": False})
    claims["scope"] = "read write admin"
    return f"{head}.{_b64(json.dumps(claims).encode())}.{sig}"


def _alg_none(env: Env) -> str:
    claims = jwt.decode(env.token(), options={"verify_signature": False})
    return jwt.encode(claims, None, algorithm="none")


CASES: dict[str, Any] = {
    "missing": lambda e: None,
    "expired": lambda e: e.token(exp=int(time.time()) - 120),
    "not_yet_valid": lambda e: e.token(nbf=int(time.time()) + 120),
    "wrong_audience": lambda e: e.token(route="other"),
    "wrong_issuer": lambda e: e.token(iss="https://evil.test"),
    "alg_none": _alg_none,
    "hs_rs_confused": _hs_signed_with_public_key,
    "tampered": _tampered,
    "unknown_kid": lambda e: e.token(kid="ghost"),
    "no_tenant_claim": lambda e: e.token(tenant=None),
    "api_key_on_jwt_route": lambda e: e.gw.keys["k1"],
}
REASONS = {
    "missing": "missing_credentials",
    "expired": "token_expired",
    "not_yet_valid": "token_not_yet_valid",
    "wrong_audience": "wrong_audience",
    "wrong_issuer": "wrong_issuer",
    "alg_none": "alg_not_allowed",
    "hs_rs_confused": "alg_not_allowed",
    "tampered": "bad_signature",
    "unknown_kid": "unknown_kid",
    "no_tenant_claim": "missing_claim",
    "api_key_on_jwt_route": "credential_not_accepted",
}


@pytest.mark.parametrize("case", list(CASES))
async def test_refused_tokens(env: Env, http: aiohttp.ClientSession, case: str) -> None:
    token = CASES[case](env)
    headers = env.bearer(token) if token is not None else {}
    ans = await post(http, env.gw.url("rs"), initialize_msg(), headers)
    reason = REASONS[case]
    assert_refused(ans, 401, UNAUTHENTICATED, reason)
    metadata = f"{env.gw.base}/.well-known/oauth-protected-resource/mcp/rs"
    expected = f'Bearer resource_metadata="{metadata}"'
    if case != "missing":
        expected += ', error="invalid_token"'
    assert ans.headers["WWW-Authenticate"] == expected
    rec = await audit_record(env.audit, ans.request_id)
    assert (rec["decision"], rec["stage"], rec["reason"], rec["http_status"]) == ("refused", "authn", reason, 401)
    assert rec["rpc_error_code"] == UNAUTHENTICATED
    if token is not None:
        assert token not in json.dumps(rec)  # never a credential in the audit trail


@pytest.mark.parametrize("kid", ["rsa1", "ec1", "ed1"])
async def test_each_asymmetric_algorithm_accepted(env: Env, http: aiohttp.ClientSession, kid: str) -> None:
    ans = await post(http, env.gw.url("rs"), initialize_msg(), env.bearer(env.token(kid=kid)))
    assert ans.status == 200, ans.body
    assert ans.body["result"]["serverInfo"]["name"] == "header-recorder"
    rec = await audit_record(env.audit, ans.request_id)
    assert (rec["auth_method"], rec["tenant"], rec["principal"]) == ("jwt", "acme", "alice"), rec


async def test_sdk_flow_with_jwt(env: Env) -> None:
    async with (
        streamablehttp_client(env.gw.url("rs"), headers=env.bearer(env.token())) as (r, w, _),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        res = await s.call_tool("add", {"a": 40, "b": 2})
        assert res.content[0].text == "42"  # type: ignore[union-attr]


async def test_insufficient_scope_challenge_on_oauth_route(env: Env, http: aiohttp.ClientSession) -> None:
    call = rpc("tools/call", {"name": "add", "arguments": {"a": 1, "b": 1}}, rpc_id=21)
    ans = await post(http, env.gw.url("rs"), call, env.bearer(env.token(scope="read")))
    assert_refused(ans, 403, FORBIDDEN, "scope_denied")
    assert ans.body["id"] == 21
    metadata = f"{env.gw.base}/.well-known/oauth-protected-resource/mcp/rs"
    assert ans.headers["WWW-Authenticate"] == (
        f'Bearer error="insufficient_scope", scope="write", resource_metadata="{metadata}"'
    )
    rec = await audit_record(env.audit, ans.request_id)
    assert (rec["stage"], rec["reason"], rec["http_status"]) == ("authz", "scope_denied", 403)


async def test_non_oauth_routes_advertise_nothing(env: Env, http: aiohttp.ClientSession) -> None:
    # HS256 route without authorization servers: JWTs work, but no OAuth discovery is advertised
    ok = await post(http, env.gw.url("hs"), initialize_msg(), env.bearer(_hs_token(env)))
    assert ok.status == 200, ok.body
    rs_on_hs = await post(http, env.gw.url("hs"), initialize_msg(), env.bearer(env.token(route="hs")))
    assert_refused(rs_on_hs, 401, UNAUTHENTICATED, "alg_not_allowed")  # an RS256 token on an HS256 route
    # the route also takes API keys: its 401 has the ApiKey challenge RFC 9110 asks for, never a Bearer one
    assert rs_on_hs.headers["WWW-Authenticate"] == 'ApiKey realm="mcp-gateway"'
    read_only = await post(
        http,
        env.gw.url("hs"),
        rpc("tools/call", {"name": "add", "arguments": {"a": 1, "b": 1}}, 4),
        env.bearer(_hs_token(env, scope="read")),
    )
    # no challenge on a non-OAuth route, so a policy refusal like any other
    assert_refused(read_only, POLICY_REFUSAL, FORBIDDEN, "scope_denied")
    assert "WWW-Authenticate" not in read_only.headers
    missing = await post(http, env.gw.url("keys"), initialize_msg(), {})
    assert_refused(missing, 401, UNAUTHENTICATED, "missing_credentials")
    # an API-key route: the RFC 9110 challenge names a scheme that starts no OAuth discovery
    assert missing.headers["WWW-Authenticate"] == 'ApiKey realm="mcp-gateway"'


def _hs_token(env: Env, scope: str = "read write") -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": env.gw.url("hs"), "sub": "svc", "tenant": "acme", "scope": scope, "exp": now + 60}
    return jwt.encode(claims, HS_SECRET, algorithm="HS256")


async def test_protected_resource_metadata(env: Env, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{env.gw.base}/.well-known/oauth-protected-resource/mcp/rs") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["resource"] == env.gw.url("rs")
    assert doc["authorization_servers"] == [ISSUER]
    assert doc["bearer_methods_supported"] == ["header"]
    for route in ("hs", "keys", "nosuch"):
        async with http.get(f"{env.gw.base}/.well-known/oauth-protected-resource/mcp/{route}") as r:
            assert r.status == 404, route


async def test_jwks_rotation_without_restart(env: Env, http: aiohttp.ClientSession) -> None:
    rotated = env.token(kid="rsa2")
    first = await post(http, env.gw.url("rs"), initialize_msg(), env.bearer(rotated))
    assert_refused(first, 401, UNAUTHENTICATED, "unknown_kid")
    # a burst of unknown kids does not become a burst of JWKS fetches (at most one per min_refresh second)
    before = env.jwks.fetches
    for _ in range(5):
        again = await post(http, env.gw.url("rs"), initialize_msg(), env.bearer(rotated))
        assert_refused(again, 401, UNAUTHENTICATED, "unknown_kid")
    assert env.jwks.fetches - before <= 1
    # the issuer rotates: the new key is published and the old one withdrawn
    key, alg = env.signers["rsa2"]
    env.jwks.keys = [_jwk(key, "rsa2", alg)] + [k for k in env.jwks.keys if k["kid"] != "rsa1"]
    deadline = time.monotonic() + 15
    status = 0
    while time.monotonic() < deadline:
        ans = await post(http, env.gw.url("rs"), initialize_msg(), env.bearer(env.token(kid="rsa2")))
        status = ans.status
        if status == 200:
            break
        await asyncio.sleep(0.3)
    assert status == 200, "rotated key not picked up"
