"""Stage 2: authentication -> Principal.

Accepts `Authorization: Bearer mgw_<id>_<secret>` or `X-API-Key: mgw_...` (API keys, checked against the
snapshot's keys.yaml). JWT verification arrives with the identity issue (#4); until then a route whose only
method is `jwt` refuses every bearer token that is not an API key.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.auth.apikeys import parse_key, verify_key
from gateway.auth.principal import Principal, anonymous_principal
from gateway.context import RequestContext
from gateway.errors import Unauthenticated
from gateway.policy.snapshot import Snapshot

API_KEY_SECRET: web.AppKey[bytes] = web.AppKey("api_key_secret", bytes)


def presented_credential(headers: object) -> str | None:
    get = getattr(headers, "get", None)
    if get is None:
        return None
    auth = get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return str(value.strip())
        return ""  # present but not a bearer credential
    key = get("X-API-Key")
    return str(key).strip() if key else None


class Authn:
    stage = "authn"

    def __init__(self, snapshot: Snapshot, secret: bytes) -> None:
        self._keys = snapshot.keys
        self._secret = secret

    async def __call__(self, ctx: RequestContext) -> None:
        server = ctx.server
        cred = presented_credential(ctx.headers)
        if not cred:
            if server is not None and server.auth.anonymous:
                ctx.principal = anonymous_principal()
                return
            raise Unauthenticated(
                "missing credentials" if cred is None else "unsupported Authorization scheme",
                reason="missing_credentials" if cred is None else "bad_scheme",
            )
        parsed = parse_key(cred)
        if parsed is None:
            raise Unauthenticated("credential is not a valid API key", reason="malformed_credential")
        key = self._keys.get(parsed.key_id)
        if key is None or not verify_key(self._secret, parsed.raw, key.hash):
            raise Unauthenticated("unknown API key", reason="unknown_key")
        if key.revoked:
            raise Unauthenticated("API key revoked", reason="key_revoked")
        if key.expires_at is not None and key.expires_at.timestamp() <= time.time():
            raise Unauthenticated("API key expired", reason="key_expired")
        ctx.principal = Principal(
            tenant=key.tenant,
            subject=f"key:{key.id}",
            role=key.role,
            scopes=frozenset(key.scopes),
            key_id=key.id,
            method="api_key",
        )


def build(snapshot: Snapshot, app: web.Application) -> Authn:
    return Authn(snapshot, app.get(API_KEY_SECRET, b""))
