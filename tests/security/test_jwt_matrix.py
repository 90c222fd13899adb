"""The JWT matrix: fifteen kinds of forged or invalid bearer token against a JWT route of a real gateway process
(a real JWKS server, a recording upstream), each refused with its own `data.reason`, audited without the token,
and never forwarded; a valid token is served. 0 wrong verdicts is the bar.

Kinds the identity e2e suite already walks through (tests/e2e/test_identity_jwt.py::test_refused_tokens: missing,
expired, nbf, audience, issuer, `alg: none`, HS/RS confusion, tampered, unknown kid) are repeated here on purpose,
as one table with the invariants that suite does not check (nothing reaches the upstream, the token is in no log);
the WWW-Authenticate challenge details stay there.

JWT verification is the same code with embedded backends and with Redis + PostgreSQL (neither holds JWKS or
tokens), so one embedded gateway serves the matrix.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.hashes import SHA256

from tests.e2e.test_identity_helpers import Answer, assert_refused, audit_record, initialize_msg, post
from tests.harness import Gateway, start_gateway
from tests.security.support import JwksServer, RecordingUpstream, start_recording_upstream

pytestmark = pytest.mark.e2e

ISSUER = "https://issuer.test"
UNAUTHENTICATED = -31001


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
    data.update({"kid": kid, "alg": alg, "use": "sig"})
    return data


@dataclass
class Env:
    gw: Gateway
    jwks: JwksServer
    upstream: RecordingUpstream
    keys: dict[str, Any]  # kid -> private key (RSA unless named ec*)

    @property
    def audit(self) -> Path:
        return self.gw.workdir / "audit.jsonl"

    def claims(self, route: str = "jwt", **changes: Any) -> dict[str, Any]:
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
        body.update(changes)
        return {k: v for k, v in body.items() if v is not None}

    def token(self, kid: str | None = "rsa1", *, signer: str | None = None, route: str = "jwt", **claims: Any) -> str:
        """A token whose header names `kid`, signed by `signer`'s key (default: the key of that kid)."""
        name = signer or kid or "rsa1"
        alg = "ES256" if name.startswith("ec") else "RS256"
        headers = {"kid": kid} if kid is not None else {}
        return jwt.encode(self.claims(route, **claims), self.keys[name], algorithm=alg, headers=headers)

    def raw_token(self, header: dict[str, Any], signer: str = "rsa1", **claims: Any) -> str:
        """A token with a header of the attacker's choosing, RS256-signed by `signer`."""
        head = _b64(json.dumps({"alg": "RS256", "typ": "JWT", **header}).encode())
        body = _b64(json.dumps(self.claims(**claims)).encode())
        sig = self.keys[signer].sign(f"{head}.{body}".encode(), padding.PKCS1v15(), SHA256())
        return f"{head}.{body}.{_b64(sig)}"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("jwt-matrix")
    keys: dict[str, Any] = {
        "rsa1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec1": ec.generate_private_key(ec.SECP256R1()),
        "retiring": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "attacker": rsa.generate_private_key(public_exponent=65537, key_size=2048),  # never in the route's JWKS
    }
    jwks = JwksServer()
    jwks.docs["jwks"] = [_jwk(keys["rsa1"], "rsa1", "RS256"), _jwk(keys["ec1"], "ec1", "ES256")]
    jwks.docs["rotating"] = [_jwk(keys["retiring"], "retiring", "RS256")]
    # what a `jku` / `x5u` header points at: the attacker's own key set, which the gateway must never fetch
    jwks.docs["attacker"] = [_jwk(keys["attacker"], "attacker", "RS256")]
    jwks.start()
    up = start_recording_upstream(work, json_response=True)

    def route(doc: str, cache_seconds: float) -> dict[str, Any]:
        jwt_policy = {
            "issuer": ISSUER,
            "jwks_url": jwks.url(doc),
            "algorithms": ["RS256", "ES256"],
            "leeway_seconds": 5,
            "jwks_cache_seconds": cache_seconds,
            "jwks_min_refresh_seconds": 1,
        }
        return {"upstreams": [{"url": up.url}], "owner": "acme", "auth": {"methods": ["jwt"], "jwt": jwt_policy}}

    policies: dict[str, Any] = {
        "servers.yaml": {
            "servers": {"jwt": route("jwks", 300), "other": route("jwks", 300), "rot": route("rotating", 1)}
        },
        "tenants.yaml": {"tenants": {"acme": {"servers": ["jwt", "other", "rot"]}}},
        "keys.yaml": {"keys": []},
        "limits.yaml": {"ddos": {"enabled": False}, "tiers": {}},
        "access.yaml": {"rules": []},
    }
    gw = start_gateway(work / "gw", policies)
    try:
        yield Env(gw, jwks, up, keys)
    finally:
        gw.stop()
        up.stop()
        jwks.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _alg_none(env: Env) -> str:
    return jwt.encode(env.claims(), None, algorithm="none")


def _hs256_with_rsa_public_key(env: Env) -> str:
    """HS256 'signed' with the RSA public key the verifier knows (the classic algorithm confusion)."""
    pem = (
        env.keys["rsa1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}).encode())
    body = _b64(json.dumps(env.claims()).encode())
    return f"{head}.{body}.{_b64(hmac.new(pem, f'{head}.{body}'.encode(), hashlib.sha256).digest())}"


def _attacker_jwk(env: Env, kid: str) -> dict[str, Any]:
    return _jwk(env.keys["attacker"], kid, "RS256")


# kind -> (token factory, HTTP status, data.reason)
MATRIX: dict[str, tuple[Callable[[Env], str], int, str]] = {
    "alg_none": (_alg_none, 401, "alg_not_allowed"),
    "hs256_signed_with_rsa_public_key": (_hs256_with_rsa_public_key, 401, "alg_not_allowed"),
    "signed_by_wrong_key": (lambda e: e.token("rsa1", signer="attacker"), 401, "bad_signature"),
    "expired": (lambda e: e.token(exp=int(time.time()) - 120), 401, "token_expired"),
    "not_yet_valid": (lambda e: e.token(nbf=int(time.time()) + 120), 401, "token_not_yet_valid"),
    "wrong_issuer": (lambda e: e.token(iss="https://evil.test"), 401, "wrong_issuer"),
    "wrong_audience": (lambda e: e.token(route="other"), 401, "wrong_audience"),
    "missing_exp": (lambda e: e.token(exp=None), 401, "missing_claim"),
    "kid_not_in_jwks": (lambda e: e.token("nosuchkid", signer="attacker"), 401, "unknown_kid"),
    "kid_path_traversal": (
        lambda e: e.raw_token({"kid": "../../../../../../etc/passwd"}, "attacker"),
        401,
        "unknown_kid",
    ),
    "kid_injection": (lambda e: e.raw_token({"kid": "x' OR '1'='1"}, "attacker"), 401, "unknown_kid"),
    "kid_dev_null": (lambda e: e.raw_token({"kid": "/dev/null"}, "attacker"), 401, "unknown_kid"),
    # jku / x5u: the attacker's key set; the token names the attacker's kid, or claims a trusted one
    "jku_to_attacker_keys": (
        lambda e: e.raw_token({"kid": "attacker", "jku": e.jwks.url("attacker")}, "attacker"),
        401,
        "unknown_kid",
    ),
    "x5u_to_attacker_keys": (
        lambda e: e.raw_token({"kid": "attacker", "x5u": e.jwks.url("attacker")}, "attacker"),
        401,
        "unknown_kid",
    ),
    "jku_with_trusted_kid": (
        lambda e: e.raw_token({"kid": "rsa1", "jku": e.jwks.url("attacker")}, "attacker"),
        401,
        "bad_signature",
    ),
    # an embedded `jwk` header (CVE-2018-0114 style): never a key source
    "embedded_jwk_own_kid": (
        lambda e: e.raw_token({"kid": "attacker", "jwk": _attacker_jwk(e, "attacker")}, "attacker"),
        401,
        "unknown_kid",
    ),
    "embedded_jwk_trusted_kid": (
        lambda e: e.raw_token({"kid": "rsa1", "jwk": _attacker_jwk(e, "rsa1")}, "attacker"),
        401,
        "bad_signature",
    ),
    "embedded_jwk_no_kid": (
        lambda e: e.raw_token({"jwk": _attacker_jwk(e, "attacker")}, "attacker"),
        401,
        "bad_signature",
    ),
    # malformed segments
    "segments_not_base64_json": (lambda e: "aaaa.bbbb.cccc", 401, "malformed_token"),
    "header_not_json": (lambda e: f"{_b64(b'not json')}.{_b64(b'{}')}.c2ln", 401, "malformed_token"),
    "empty_signature": (lambda e: e.token().rsplit(".", 1)[0] + ".", 401, "bad_signature"),
    "two_segments": (lambda e: ".".join(e.token().split(".")[:2]), 401, "malformed_credential"),
    "four_segments": (lambda e: e.token() + ".e30", 401, "malformed_credential"),
    # over 16 KiB: refused as a malformed header before any parsing (docs/identity.md: 400)
    "huge_token": (lambda e: e.token(pad="x" * (17 * 1024)), 400, "malformed_authorization"),
}


def _no_token_leaked(env: Env, token: str, rec: dict[str, Any]) -> None:
    signature = token.rsplit(".", 1)[-1]
    assert token not in json.dumps(rec), rec
    logs = env.gw.logs()
    assert token not in logs
    if len(signature) >= 16:
        assert signature not in logs and signature not in json.dumps(rec)


async def _refused(env: Env, http: aiohttp.ClientSession, token: str, status: int, reason: str) -> Answer:
    mark = env.upstream.mark()
    ans = await post(http, env.gw.url("jwt"), initialize_msg(), {"Authorization": f"Bearer {token}"})
    assert_refused(ans, status, UNAUTHENTICATED, reason)
    rec = await audit_record(env.audit, ans.request_id)
    assert (rec["decision"], rec["stage"], rec["reason"], rec["http_status"]) == ("refused", "authn", reason, status)
    assert rec["rpc_error_code"] == UNAUTHENTICATED and rec["tenant"] is None and rec["principal"] is None, rec
    ours = [r for r in env.upstream.requests_since(mark) if r["headers"].get("x-request-id") == ans.request_id]
    assert ours == [], "a refused token's request reached the upstream"
    _no_token_leaked(env, token, rec)
    return ans


@pytest.mark.parametrize("kind", list(MATRIX))
async def test_forged_or_invalid_token_refused(env: Env, http: aiohttp.ClientSession, kind: str) -> None:
    make, status, reason = MATRIX[kind]
    fetches = env.jwks.fetches.get("attacker", 0)
    await _refused(env, http, make(env), status, reason)
    # a key source named in the token (jku, x5u) is never fetched
    assert env.jwks.fetches.get("attacker", 0) == fetches == 0


async def test_valid_token_served_without_forwarding_it(env: Env, http: aiohttp.ClientSession) -> None:
    """The control of the matrix: a valid token (RS256 and ES256) is served; the upstream never sees it."""
    for kid in ("rsa1", "ec1"):
        token = env.token(kid)
        mark = env.upstream.mark()
        ans = await post(http, env.gw.url("jwt"), initialize_msg(), {"Authorization": f"Bearer {token}"})
        assert ans.status == 200, (kid, ans.body)
        rec = await audit_record(env.audit, ans.request_id)
        assert (rec["auth_method"], rec["tenant"], rec["principal"]) == ("jwt", "acme", "alice"), rec
        seen = [r for r in env.upstream.requests_since(mark) if r["headers"].get("x-request-id") == ans.request_id]
        assert len(seen) == 1 and "authorization" not in seen[0]["headers"], seen
        assert token not in json.dumps(env.upstream.since(mark))
        _no_token_leaked(env, token, rec)


async def test_token_of_a_key_removed_from_jwks_refused(env: Env, http: aiohttp.ClientSession) -> None:
    """A key the issuer withdraws stops verifying once the JWKS cache refreshes (1 s on this route), without a
    restart: a stolen signing key's tokens die with its removal."""
    token = env.token("retiring", route="rot")
    url = env.gw.url("rot")
    ok = await post(http, url, initialize_msg(), {"Authorization": f"Bearer {token}"})
    assert ok.status == 200, ok.body
    env.jwks.docs["rotating"] = []
    deadline = time.monotonic() + 20
    ans = ok
    while time.monotonic() < deadline:
        ans = await post(http, url, initialize_msg(), {"Authorization": f"Bearer {token}"})
        if ans.status != 200:
            break
        await asyncio.sleep(0.3)
    assert_refused(ans, 401, UNAUTHENTICATED, "unknown_kid")
    rec = await audit_record(env.audit, ans.request_id)
    assert (rec["stage"], rec["reason"], rec["http_status"]) == ("authn", "unknown_kid", 401), rec
    _no_token_leaked(env, token, rec)
    # and it stays refused
    again = await post(http, url, initialize_msg(), {"Authorization": f"Bearer {token}"})
    assert_refused(again, 401, UNAUTHENTICATED, "unknown_kid")
