"""PostgresKeyStore against a real PostgreSQL: the positive cache is keyed by the full hash, unknown ids and
wrong secrets are answered from the short-lived row cache, concurrent misses share one query, revocations
show after the TTL (at once after `invalidate`), and usage batches add up."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from gateway.auth.apikeys import generate_key, hash_key
from gateway.auth.keyrecord import KeyRecord
from gateway.auth.pgkeys import KeyRepository, NewKey, PostgresKeyStore
from gateway.db.scratch import scratch_database

pytestmark = pytest.mark.integration

SECRET = b"pgstore-test-secret"


@pytest.fixture
async def db(postgres_dsn: str) -> AsyncIterator[str]:
    async with scratch_database(postgres_dsn, prefix="mgw_identity_") as dsn:
        yield dsn


class CountingStore(PostgresKeyStore):
    """The real store; counts the queries it really sends."""

    queries = 0

    async def _fetch(self, key_id: str) -> KeyRecord | None:
        self.queries += 1
        return await super()._fetch(key_id)


async def test_store_caching_and_revocation(db: str) -> None:
    lookups: Counter[str] = Counter()
    store = CountingStore(
        db, pool_size=2, ttl=0.5, negative_ttl=0.5, timeout=5, on_lookup=lambda r: lookups.update([r])
    )
    kid, raw = generate_key()
    digest = hash_key(SECRET, raw)
    repo = KeyRepository(await store.pool())
    await repo.create(NewKey(id=kid, hash=digest, tenant="acme", scopes=["read"], allow_ips=["10.0.0.0/8"]))
    try:
        rec = await store.lookup(kid, digest)
        assert rec is not None and rec.tenant == "acme" and rec.scopes == frozenset({"read"})
        assert not rec.ip_allowed("127.0.0.1") and rec.ip_allowed("10.9.9.9")
        assert store.queries == 1
        assert await store.lookup(kid, digest) is rec and store.queries == 1  # positive cache, by full hash
        assert await store.lookup(kid, hash_key(SECRET, raw + "x")) is None  # wrong secret: row cache, no query
        assert store.queries == 1

        # an unknown id: one query, then remembered for negative_ttl
        assert await store.lookup("nosuch", "0" * 64) is None
        assert await store.lookup("nosuch", "0" * 64) is None
        assert store.queries == 2

        # concurrent misses for one id share one query
        kid2, raw2 = generate_key()
        await repo.create(NewKey(id=kid2, hash=hash_key(SECRET, raw2), tenant="acme", scopes=["read", "write"]))
        got = await asyncio.gather(*(store.lookup(kid2, hash_key(SECRET, raw2)) for _ in range(20)))
        assert all(g is not None and g.id == kid2 for g in got)
        assert store.queries == 3

        # revoked elsewhere: visible once the TTL has passed; `invalidate` makes it immediate
        assert await repo.revoke(kid)
        assert not (await store.lookup(kid, digest)).revoked  # type: ignore[union-attr]
        await asyncio.sleep(0.6)
        assert (await store.lookup(kid, digest)).revoked  # type: ignore[union-attr]
        assert await repo.revoke(kid2, tenant="globex") is False  # another tenant's revoke touches nothing
        assert await repo.revoke(kid2, tenant="acme")
        store.invalidate(kid2)
        assert (await store.lookup(kid2, hash_key(SECRET, raw2))).revoked  # type: ignore[union-attr]
        assert lookups["miss"] >= 4 and lookups["hit"] >= 3

        # usage batches add up across flushes (and replicas)
        now = datetime.now(UTC)
        await repo.add_usage([(kid, 3, now)])
        await repo.add_usage([(kid, 2, now)])
        rows = {r["id"]: r for r in await repo.list("acme")}
        assert rows[kid]["request_count"] == 5 and rows[kid2]["request_count"] is None
    finally:
        await store.close()
