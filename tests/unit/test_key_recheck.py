"""A long-lived connection's key, re-checked per message without waiting on PostgreSQL (gateway/auth/pgkeys.py
`recheck`) and against the snapshot's keys.yaml (gateway/filters/authz.py). The store's query is replaced: this is
the cache logic only; tests/security/test_ws_revocation.py drives the real thing."""

from __future__ import annotations

import asyncio

import pytest

from gateway.auth.keyrecord import KeyRecord, from_policy
from gateway.auth.pgkeys import PostgresKeyStore
from gateway.errors import Unauthenticated
from gateway.filters.authz import Authz
from gateway.policy.snapshot import Snapshot
from gateway.testing import context, rpc, snapshot

pytestmark = pytest.mark.unit


def _record(revoked: bool = False, digest: str = "a" * 64, expires_at: float | None = None) -> KeyRecord:
    return KeyRecord(
        id="k1",
        hash=digest,
        tenant="acme",
        scopes=frozenset({"read"}),
        role="user",
        networks=(),
        expires_at=expires_at,
        revoked=revoked,
        tools=None,
        source="postgres",
    )


class Rows:
    """What the database holds now, and how many times it was asked."""

    def __init__(self, rec: KeyRecord | None) -> None:
        self.rec = rec
        self.fetches = 0

    async def fetch(self, key_id: str) -> KeyRecord | None:
        self.fetches += 1
        return self.rec


def _store(rows: Rows, ttl: float) -> PostgresKeyStore:
    store = PostgresKeyStore("postgresql://unused", pool_size=1, ttl=ttl, negative_ttl=ttl, timeout=1.0)
    store._fetch = rows.fetch  # type: ignore[method-assign]  # the query only; the caching is what is tested
    return store


async def test_a_revocation_elsewhere_reaches_an_open_connection_after_the_ttl() -> None:
    rows = Rows(_record())
    store = _store(rows, ttl=0.0)  # every cached row is stale at once
    assert await store.lookup("k1", "a" * 64) is not None
    assert store.recheck("k1", "a" * 64) is True  # good as far as known; a refresh started
    rows.rec = _record(revoked=True)  # another replica revoked it
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert rows.fetches == 2
    assert store.recheck("k1", "a" * 64) is False


async def test_fresh_rows_are_not_fetched_again_and_unknown_is_not_a_refusal() -> None:
    rows = Rows(_record())
    store = _store(rows, ttl=3600.0)
    assert store.recheck("k1", "a" * 64) is None  # nothing cached: not a refusal, but fetched for next time
    await asyncio.sleep(0)
    assert store.recheck("k1", "a" * 64) is True
    assert store.recheck("k1", "b" * 64) is False  # re-hashed: the secret the socket proved is no longer the key
    fetches = rows.fetches
    for _ in range(10):
        store.recheck("k1", "a" * 64)
    await asyncio.sleep(0)
    assert rows.fetches == fetches  # per message, no query while the row is fresh


async def test_the_revoking_process_sees_its_own_revocation_at_once() -> None:
    rows = Rows(_record())
    store = _store(rows, ttl=3600.0)
    await store.lookup("k1", "a" * 64)
    rows.rec = _record(revoked=True)
    await store.refresh("k1")
    assert store.recheck("k1", "a" * 64) is False
    rows.rec = None  # deleted
    await store.refresh("k1")
    assert store.recheck("k1", "a" * 64) is False
    rows.rec = _record(expires_at=1.0)  # expired long ago
    await store.refresh("k1")
    assert store.recheck("k1", "a" * 64) is False


async def test_a_websocket_message_of_a_keys_yaml_key_revoked_since_the_upgrade_is_refused() -> None:
    key = {"id": "k1", "hash": "a" * 64, "tenant": "acme", "scopes": ["read"]}
    servers = {"example": {"upstreams": [{"url": "http://127.0.0.1:9/mcp"}], "owner": "acme"}}
    before = snapshot(servers, keys=[key])
    principal = from_policy(before.keys["k1"]).principal
    assert principal.key_source == "policy" and principal.key_hash == "a" * 64

    async def judge(snap: Snapshot, transport: str = "websocket") -> None:
        await Authz(snap, "http://gw")(
            context("example", rpc("tools/list"), snap=snap, principal=principal, transport=transport)
        )

    await judge(before)
    for changed in ({**key, "revoked": True}, {**key, "hash": "b" * 64}, {**key, "expires_at": "2001-01-01T00:00:00Z"}):
        with pytest.raises(Unauthenticated) as refused:
            await judge(snapshot(servers, keys=[changed]))
        assert refused.value.reason == "key_revoked"
    gone = snapshot(servers, keys=[])
    with pytest.raises(Unauthenticated):
        await judge(gone)
    # a plain HTTP request was authenticated against this very snapshot's keys: no second look
    await judge(gone, transport="streamable-http")
