"""Access tokens of the built-in authorization server: ES256 JWTs (RFC 9068 `at+jwt`) signed with the gateway's
key, bound to one route (`aud`, RFC 8707), naming the API key the user signed in with.

Validation is the authn stage's (gateway/filters/authn.py): signature, issuer, audience, expiry, then the key
itself, looked up the way authn looks up API keys (a dict for keys.yaml, the cached store for PostgreSQL): a
revoked, expired or replaced key (another hash under the same id) refuses its tokens at once. The token's scopes
are cut to the key's; the key's own tool rules and networks apply as if the key were presented.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import jwt

from gateway.auth.keyrecord import KeyRecord
from gateway.auth.principal import Principal
from gateway.auth.tokens import decode_or_refuse, refuse
from gateway.oauth.model import Grant, key_fingerprint
from gateway.oauth.signing import ALGORITHM, SigningKey

KeyLookup = Callable[[str], Awaitable[KeyRecord | None]]
TOKEN_TYPE = "at+jwt"
LEEWAY = 5.0
MAX_TOKEN = 16 * 1024
_MAX_REVOKED = 100_000


class AccessTokens:
    def __init__(self, key: SigningKey, issuer: str, lifetime: int) -> None:
        self.key = key
        self.issuer = issuer
        self.lifetime = lifetime
        self._public = key.private.public_key()
        # grant families revoked by this process (refresh-token reuse, RFC 7009): their access tokens are refused
        # here at once; other replicas stop renewing them and their access tokens expire within `lifetime`
        self._revoked: OrderedDict[str, None] = OrderedDict()

    def mint(self, grant: Grant, now: float | None = None) -> str:
        now = time.time() if now is None else now
        claims = {
            "iss": self.issuer,
            "aud": grant.resource,
            "sub": f"key:{grant.key_id}",
            "tenant": grant.tenant,
            "role": grant.role,
            "scope": " ".join(grant.scopes),
            "client_id": grant.client_id,
            "mgw_key": grant.key_id,
            "mgw_kfp": grant.key_fp,
            "mgw_fam": grant.family,
            "iat": int(now),
            "exp": int(now) + self.lifetime,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            claims, self.key.private, algorithm=ALGORITHM, headers={"kid": self.key.kid, "typ": TOKEN_TYPE}
        )

    def owns(self, token: str) -> bool:
        """Whether `token` claims to be ours (its header names our key); says nothing about its validity."""
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.InvalidTokenError, ValueError, TypeError):
            return False
        return header.get("kid") == self.key.kid

    def revoke_family(self, family: str) -> None:
        self._revoked[family] = None
        if len(self._revoked) > _MAX_REVOKED:
            self._revoked.popitem(last=False)  # the oldest: its access tokens expired long ago

    def claims(self, token: str, audience: str | None) -> dict[str, Any]:
        """The verified claims; `audience` None skips the audience check (revocation endpoint)."""
        if len(token) > MAX_TOKEN:
            raise refuse("token too large", "malformed_token")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise refuse("token is not a well-formed JWT", "malformed_token") from None
        if header.get("alg") != ALGORITHM or header.get("typ") != TOKEN_TYPE:
            raise refuse("token algorithm or type not allowed", "alg_not_allowed")
        options: dict[str, Any] = {"require": ["exp", "iss", "aud", "sub"], "verify_aud": audience is not None}
        return decode_or_refuse(
            token,
            self._public,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=self.issuer,
            leeway=LEEWAY,
            options=options,
        )

    async def verify(self, token: str, audience: str, client_ip: str, lookup: KeyLookup) -> Principal:
        claims = self.claims(token, audience)
        key_id, fp, family = claims.get("mgw_key"), claims.get("mgw_kfp"), claims.get("mgw_fam")
        tenant, scope = claims.get("tenant"), claims.get("scope")
        if not all(isinstance(v, str) and v for v in (key_id, fp, family, tenant)) or not isinstance(scope, str):
            raise refuse("token lacks the gateway's claims", "missing_claim")
        assert isinstance(key_id, str) and isinstance(family, str)
        if family in self._revoked:
            raise refuse("token's grant was revoked", "token_revoked")
        rec = await lookup(key_id)
        if rec is None or key_fingerprint(rec.hash) != fp or rec.tenant != tenant:
            raise refuse("the API key behind this token no longer exists", "key_revoked")
        key_principal = rec.admit(client_ip)  # revoked, expired, outside its networks: refused like the key
        exp = float(claims["exp"]) + LEEWAY
        return Principal(
            tenant=rec.tenant,
            subject=key_principal.subject,
            role=rec.role,
            scopes=frozenset(scope.split()) & rec.scopes,
            key_id=rec.id,
            method="jwt",
            issuer=self.issuer,
            tools=rec.tools,
            expires_at=exp if rec.expires_at is None else min(exp, rec.expires_at),
            networks=rec.networks,
            # the key behind the token, re-checked per frame of a WebSocket and on reload for GET streams
            key_hash=rec.hash,
            key_source=rec.source,
        )
