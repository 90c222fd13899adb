"""API keys as the authorization server sees them: the one a user presents on the sign-in page (verified like
authn verifies it: HMAC, keys.yaml first, then the PostgreSQL store) and the one behind a grant (by id)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from gateway.auth.apikeys import parse_key
from gateway.auth.keyrecord import KeyRecord
from gateway.auth.pgkeys import PostgresKeyStore
from gateway.policy.snapshot import Snapshot


class KeyResolver:
    def __init__(self, secret: bytes, store: PostgresKeyStore | None, snapshot: Callable[[], Snapshot | None]) -> None:
        self._secret = secret
        self._store = store
        self._snapshot = snapshot

    async def by_secret(self, raw: str) -> KeyRecord | None:
        """The key `raw` is, or None (malformed, unknown, wrong secret). Revocation etc. is `admit`'s job."""
        parsed = parse_key(raw)
        if parsed is None or not self._secret:
            return None
        digest = hmac.new(self._secret, raw.encode(), hashlib.sha256).hexdigest()
        rec = self._policy_key(parsed.key_id)
        if rec is None and self._store is not None:
            rec = await self._store.lookup(parsed.key_id, digest)
        if rec is None or not hmac.compare_digest(rec.hash, digest):
            return None
        return rec

    async def by_id(self, key_id: str) -> KeyRecord | None:
        rec = self._policy_key(key_id)
        if rec is None and self._store is not None:
            rec = await self._store.current(key_id)
        return rec

    def _policy_key(self, key_id: str) -> KeyRecord | None:
        snap = self._snapshot()
        if snap is None:
            return None
        return snap.key_records.get(key_id)


def tenant_reaches(snapshot: Snapshot, tenant: str, server_name: str) -> bool:
    """Whether `tenant` may call `server_name` (owner, tenants.yaml, shared_with): the authz stage's reach rule."""
    server = snapshot.servers.get(server_name)
    if server is None:
        return False
    if "*" in server.shared_with or tenant in server.shared_with or server.owner == tenant:
        return True
    t = snapshot.tenants.get(tenant)
    return t is not None and server_name in t.servers
