"""JWT verification for one route: algorithm allowlist of one family, key from the HS secret or the JWKS, then
`iss`, `aud` (the route), `exp`/`nbf` with leeway, and the configured claims -> Principal.

Every refusal is an `Unauthenticated` with a stable reason; the token itself is never logged.
"""

from __future__ import annotations

from typing import Any

import jwt
import orjson

from gateway.auth.jwks import JwksCache
from gateway.auth.principal import Principal
from gateway.errors import Unauthenticated
from gateway.policy.auth import JwtPolicy

MAX_TOKEN_BYTES = 16 * 1024


def _claim(claims: dict[str, Any], path: str) -> Any:
    cur: Any = claims
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def refuse(message: str, reason: str) -> Unauthenticated:
    return Unauthenticated(message, reason=reason)


def decode_or_refuse(token: str, key: Any, **decode: Any) -> dict[str, Any]:
    """`jwt.decode`, each PyJWT failure turned into the gateway's 401 with a stable reason: one mapping for every
    token the gateway verifies (an identity provider's JWTs, its own OAuth access tokens in gateway/oauth/)."""
    try:
        claims: dict[str, Any] = jwt.decode(token, key, **decode)
    except jwt.ExpiredSignatureError:
        raise refuse("token expired", "token_expired") from None
    except jwt.ImmatureSignatureError:
        raise refuse("token not yet valid", "token_not_yet_valid") from None
    except jwt.InvalidAudienceError:
        raise refuse("token was not issued for this route", "wrong_audience") from None
    except jwt.InvalidIssuerError:
        raise refuse("token issuer not accepted", "wrong_issuer") from None
    except jwt.MissingRequiredClaimError as exc:
        raise refuse(f"token lacks the {exc.claim!r} claim", "missing_claim") from None
    except jwt.InvalidSignatureError:
        raise refuse("token signature does not verify", "bad_signature") from None
    except jwt.InvalidAlgorithmError:
        raise refuse("token algorithm not allowed on this route", "alg_not_allowed") from None
    except (jwt.InvalidTokenError, jwt.PyJWKError, ValueError, TypeError):
        raise refuse("token is invalid", "invalid_token") from None
    return claims


class JwtVerifier:
    def __init__(self, policy: JwtPolicy, audience: str, hs_secret: bytes | None, jwks: JwksCache | None) -> None:
        self._policy = policy
        self._algorithms = frozenset(policy.algorithms)
        self._audience = audience
        self._hs_secret = hs_secret
        self._jwks = jwks
        self._claims = policy.claims
        self._scope_map = {k: frozenset(v) for k, v in policy.scope_map.items()}
        self._options: dict[str, Any] = {"require": ["exp", "iss", "aud"], "verify_signature": True}

    @property
    def audience(self) -> str:
        return self._audience

    async def verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise refuse("token too large", "malformed_token")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.InvalidTokenError, orjson.JSONDecodeError, ValueError, TypeError):
            raise refuse("token is not a well-formed JWT", "malformed_token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            # covers `none` and HS/RS confusion: only this route's one family of algorithms is ever tried
            raise refuse("token algorithm not allowed on this route", "alg_not_allowed")
        key: Any
        if self._hs_secret is not None:
            key = self._hs_secret
        else:
            assert self._jwks is not None
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise refuse("token kid is not a string", "malformed_token")
            key = await self._jwks.key(kid, alg)
            if key is None:
                raise refuse("no signing key for this token's kid", "unknown_kid")
        claims = decode_or_refuse(
            token,
            key,
            algorithms=[alg],
            audience=self._audience,
            issuer=self._policy.issuer,
            leeway=self._policy.leeway_seconds,
            options=self._options,
        )
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        c = self._claims
        tenant = _claim(claims, c.tenant)
        subject = _claim(claims, c.subject)
        if not isinstance(tenant, str) or not tenant:
            raise refuse(f"token lacks the {c.tenant!r} claim", "missing_claim")
        if not isinstance(subject, str) or not subject:
            raise refuse(f"token lacks the {c.subject!r} claim", "missing_claim")
        role = _claim(claims, c.role)
        exp = claims.get("exp")
        return Principal(
            tenant=tenant,
            subject=subject,
            role=role if isinstance(role, str) and role else self._policy.default_role,
            scopes=self._scopes(_claim(claims, c.scopes)),
            method="jwt",
            issuer=self._policy.issuer,
            expires_at=float(exp) + self._policy.leeway_seconds if isinstance(exp, int | float) else None,
        )

    def _scopes(self, raw: Any) -> frozenset[str]:
        if isinstance(raw, str):
            names = raw.split()
        elif isinstance(raw, list):
            names = [s for s in raw if isinstance(s, str)]
        else:
            return frozenset()
        if not self._scope_map:
            return frozenset(n for n in names if n in ("read", "write", "admin"))
        out: set[str] = set()
        for n in names:
            out |= self._scope_map.get(n, frozenset())
        return frozenset(out)


def oauth_scopes_for(policy: JwtPolicy, scope: str) -> list[str]:
    """The token scopes that grant a gateway scope (for the `insufficient_scope` challenge)."""
    if not policy.scope_map:
        return [scope]
    return sorted(k for k, v in policy.scope_map.items() if scope in v) or [scope]
