"""JWT verification logic without a network: claims mapping, scopes, leeway, refusal reasons, JWKS key choice,
and the policy rules that keep algorithm families apart and JWKS URLs on TLS."""

from __future__ import annotations

import json
import string
import time
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.auth.jwks import JwksCache
from gateway.auth.principal import Principal
from gateway.auth.tokens import JwtVerifier, oauth_scopes_for
from gateway.errors import Unauthenticated
from gateway.policy.auth import JwtPolicy, RouteAuth

pytestmark = pytest.mark.unit

SECRET = "s" * 64
AUD = "https://gw/mcp/x"


def policy(**kw: Any) -> JwtPolicy:
    return JwtPolicy.model_validate({"issuer": "https://idp", "algorithms": ["HS256"], "hs_secret": {"env": "X"}, **kw})


def verifier(**kw: Any) -> JwtVerifier:
    return JwtVerifier(policy(**kw), AUD, SECRET.encode(), None)


def token(secret: str = SECRET, alg: str = "HS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "https://idp", "aud": AUD, "sub": "u1", "tenant": "acme", "exp": now + 60, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, algorithm=alg)


async def principal(v: JwtVerifier, tok: str) -> Principal:
    return await v.verify(tok)


async def reason(v: JwtVerifier, tok: str) -> str:
    with pytest.raises(Unauthenticated) as info:
        await v.verify(tok)
    assert info.value.status == 401
    return info.value.reason


async def test_claims_to_principal() -> None:
    p = await principal(verifier(), token(scope="read write bogus", role="admin"))
    assert (p.tenant, p.subject, p.role, p.method, p.issuer) == ("acme", "u1", "admin", "jwt", "https://idp")
    assert p.scopes == frozenset({"read", "write"})
    assert p.binding_id == "jwt:https://idp:acme:u1"
    exp = int(time.time()) + 60
    p = await principal(verifier(leeway_seconds=5), token(exp=exp))
    assert p.expires_at == exp + 5  # authz re-checks this on every message of a WebSocket connection
    nested = verifier(claims={"tenant": "org.id", "scopes": "scp", "role": "r"}, default_role="viewer")
    p = await principal(nested, token(tenant=None, org={"id": "globex"}, scp=["read", 7]))
    assert (p.tenant, p.role, p.scopes) == ("globex", "viewer", frozenset({"read"}))


async def test_scope_map() -> None:
    v = verifier(scope_map={"mcp:tools": ["read", "write"], "mcp:admin": ["admin"]})
    p = await principal(v, token(scope="mcp:tools read"))
    assert p.scopes == frozenset({"read", "write"})  # unmapped names give nothing
    assert oauth_scopes_for(policy(scope_map={"mcp:tools": ["read", "write"]}), "write") == ["mcp:tools"]
    assert oauth_scopes_for(policy(), "write") == ["write"]


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"exp": -100}, "token_expired"),  # relative to now, computed when the test runs
        ({"nbf": 100}, "token_not_yet_valid"),
        ({"aud": "https://gw/mcp/other"}, "wrong_audience"),
        ({"iss": "https://evil"}, "wrong_issuer"),
        ({"exp": None}, "missing_claim"),
        ({"tenant": None}, "missing_claim"),
        ({"sub": ""}, "missing_claim"),
    ],
)
async def test_claim_refusals(claims: dict[str, Any], expected: str) -> None:
    now = int(time.time())
    claims = {k: now + v if k in ("exp", "nbf") and v is not None else v for k, v in claims.items()}
    assert await reason(verifier(), token(**claims)) == expected


async def test_leeway() -> None:
    v = verifier(leeway_seconds=30)
    await principal(v, token(exp=int(time.time()) - 10))  # within leeway
    assert await reason(v, token(exp=int(time.time()) - 60)) == "token_expired"


async def test_signature_and_algorithm_refusals() -> None:
    v = verifier()
    assert await reason(v, token(secret="t" * 64)) == "bad_signature"
    assert await reason(v, token(alg="HS384")) == "alg_not_allowed"
    assert await reason(v, jwt.encode({"sub": "x"}, None, algorithm="none")) == "alg_not_allowed"
    assert await reason(v, "not.a.jwt") == "malformed_token"
    assert await reason(v, "a" * 20000) == "malformed_token"


def test_policy_keeps_families_apart_and_jwks_on_tls() -> None:
    with pytest.raises(ValidationError, match="all HMAC"):
        JwtPolicy.model_validate(
            {"issuer": "i", "algorithms": ["HS256", "RS256"], "hs_secret": {"env": "X"}, "jwks_url": "https://j"}
        )
    with pytest.raises(ValidationError, match="hs_secret"):
        JwtPolicy.model_validate({"issuer": "i", "algorithms": ["HS256"]})
    with pytest.raises(ValidationError, match="jwks_url"):
        JwtPolicy.model_validate({"issuer": "i", "algorithms": ["RS256"]})
    with pytest.raises(ValidationError, match="https"):
        JwtPolicy.model_validate({"issuer": "i", "jwks_url": "http://idp.example/jwks"})
    JwtPolicy.model_validate({"issuer": "i", "jwks_url": "http://127.0.0.1:9/jwks"})
    assert not RouteAuth.model_validate({"methods": ["jwt"], "jwt": {"issuer": "i", "jwks_url": "https://j"}}).oauth
    assert RouteAuth.model_validate(
        {"methods": ["jwt"], "jwt": {"issuer": "i", "jwks_url": "https://j", "authorization_servers": ["https://a"]}}
    ).oauth


def _jwk(key: Any, family: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(jwt.algorithms.get_default_algorithms()[family].to_jwk(key.public_key()))
    return {**data, **extra}


def _no_session() -> aiohttp.ClientSession:
    raise AssertionError("no fetch expected")


def test_jwks_key_choice() -> None:
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    e = ec.generate_private_key(ec.SECP256R1())
    cache = JwksCache("https://idp/jwks", _no_session, 300, 30, 5)
    cache._jwks = {"r": _jwk(r, "RS256", kid="r"), "e": _jwk(e, "ES256", kid="e", alg="ES256")}
    found = cache._find("r", "RS256")
    assert found is not None and found.algorithm_name == "RS256"
    assert cache._find("r", "RS384") is not None  # an RSA key without `alg` serves the RSA family
    assert cache._find("e", "RS256") is None  # the key says ES256
    assert cache._find("r", "ES256") is None  # an RSA key cannot verify ES256
    assert cache._find("zzz", "RS256") is None
    assert cache._find(None, "ES256") is not None  # no kid: only one key could be meant
    assert cache._find(None, "RS256") is not None  # `e` is fixed to ES256, so `r` is the only candidate
    cache._jwks["r2"] = _jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256", kid="r2")
    assert cache._find(None, "RS256") is None  # now ambiguous: refuse rather than guess
    cache._jwks["enc"] = _jwk(r, "RS256", kid="enc", use="enc")
    assert cache._find("enc", "RS256") is None  # an encryption key never verifies signatures


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.sampled_from(["HS256", "none", "RS256"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["alg", "kid", "typ", "x"]), inner),
    max_leaves=6,
)
_SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "-_=", max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.one_of(
        st.lists(_SEGMENT, min_size=3, max_size=3),
        st.lists(
            st.one_of(
                _SEGMENT, st.builds(lambda d: jwt.utils.base64url_encode(json.dumps(d).encode()).decode(), _JSONISH)
            ),
            min_size=3,
            max_size=3,
        ),
    )
)
async def test_fuzzed_tokens_only_ever_refused_cleanly(parts: list[str]) -> None:
    with pytest.raises(Unauthenticated) as info:
        await verifier().verify(".".join(parts))
    assert info.value.status == 401


def test_offline_checks_of_identity_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.policy.compilers import run_compile_checks
    from gateway.policy.model import PolicySet

    def servers(secret_ref: dict[str, str]) -> PolicySet:
        auth = {"methods": ["jwt"], "jwt": {"issuer": "i", "algorithms": ["HS256"], "hs_secret": secret_ref}}
        up = [{"url": "http://127.0.0.1:1/mcp"}]
        return PolicySet.model_validate({"servers": {"servers": {"s": {"upstreams": up, "auth": auth}}}})

    monkeypatch.delenv("MGW_TEST_HS", raising=False)
    problems = run_compile_checks(servers({"env": "MGW_TEST_HS"}))
    assert [(p.path, p.reason) for p in problems] == [
        ("servers.s.auth.jwt.hs_secret", "environment variable MGW_TEST_HS is not set")
    ]
    monkeypatch.setenv("MGW_TEST_HS", "short")
    assert [p.reason for p in run_compile_checks(servers({"env": "MGW_TEST_HS"}))] == ["shorter than 32 bytes"]
    monkeypatch.setenv("MGW_TEST_HS", "x" * 32)
    assert run_compile_checks(servers({"env": "MGW_TEST_HS"})) == []
    with pytest.raises(ValidationError, match="authorization server"):
        JwtPolicy.model_validate({"issuer": "i", "jwks_url": "https://j", "authorization_servers": ["http://as"]})
