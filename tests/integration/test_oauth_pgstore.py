"""The authorization server's PostgreSQL store (migrations 040, 041) on a scratch database of the shared server: single
use of codes and refresh tokens under concurrency, what a loser learns (replay), family revocation, the client
limit, and hashes only in the tables."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from gateway.db.scratch import scratch_database
from gateway.oauth.model import Client, CodeGrant, Grant, digest, new_secret
from gateway.oauth.pgstore import PostgresStore

pytestmark = pytest.mark.integration


def grant(family: str = "fam1") -> Grant:
    return Grant("c1", "rw", "f" * 32, "acme", "user", ("read", "write"), "http://gw/mcp/o", family)


async def test_postgres_store(postgres_dsn: str) -> None:
    async with scratch_database(postgres_dsn, prefix="mgw_oauth_") as dsn:
        store = PostgresStore(dsn, pool_size=4)
        try:
            # clients, bounded
            def client(cid: str) -> Client:
                return Client(cid, cid, ("http://127.0.0.1:1/cb",), "none")

            assert await store.add_client(client("c1"), limit=2, unclaimed_ttl=3600)
            assert await store.add_client(client("c2"), limit=2, unclaimed_ttl=3600)
            assert not await store.add_client(client("c3"), limit=2, unclaimed_ttl=3600)
            got = await store.client("c1")
            assert got is not None and got.redirect_uris == ("http://127.0.0.1:1/cb",)
            assert await store.client("c3") is None
            # a user approved c1; c2 was never approved: once it is older than the limit it gives way
            await store.claim_client("c1")
            await asyncio.sleep(0.05)
            assert await store.add_client(client("c3"), limit=2, unclaimed_ttl=0.01)
            assert [await store.client(c) is not None for c in ("c1", "c2", "c3")] == [True, False, True]
            # the periodic prune drops unclaimed ones too
            await asyncio.sleep(0.05)
            await store.prune(unclaimed_ttl=0.01)
            assert [await store.client(c) is not None for c in ("c1", "c3")] == [True, False]

            # a code: of ten concurrent redemptions exactly one wins, the others learn it was a replay
            code = new_secret()
            await store.put_code(digest(code), CodeGrant(grant(), "http://127.0.0.1:1/cb", "x" * 43), time.time() + 60)
            results = await asyncio.gather(*(store.use_code(digest(code)) for _ in range(10)))
            statuses = sorted(s for _, s in results)
            assert statuses == ["ok"] + ["replayed"] * 9, statuses
            assert all(c is not None and c.grant == grant() for c, _ in results)
            assert (await store.use_code(digest("nope")))[1] == "unknown"
            expired = new_secret()
            await store.put_code(digest(expired), CodeGrant(grant(), "u", "x" * 43), time.time() - 1)
            assert (await store.use_code(digest(expired)))[1] == "expired"

            # refresh tokens: the same single use, then family revocation reaches every member
            r1, r2 = new_secret(), new_secret()
            await store.put_refresh(digest(r1), grant("fam2"), time.time() + 60)
            await store.put_refresh(digest(r2), grant("fam2"), time.time() + 60)
            results2 = await asyncio.gather(*(store.use_refresh(digest(r1)) for _ in range(5)))
            assert sorted(s for _, s in results2) == ["ok"] + ["replayed"] * 4
            assert (await store.find_refresh(digest(r2))) == grant("fam2")
            await store.revoke_family("fam2")
            assert (await store.use_refresh(digest(r2)))[1] == "revoked"

            # nothing but hashes in the tables
            conn = await asyncpg.connect(dsn)
            try:
                rows = await conn.fetch("SELECT code_hash AS h, doc::text AS d FROM mgw_oauth_codes")
                rows += await conn.fetch("SELECT token_hash AS h, doc::text AS d FROM mgw_oauth_refresh_tokens")
            finally:
                await conn.close()
            text = " ".join(f"{r['h']} {r['d']}" for r in rows)
            for secret in (code, expired, r1, r2):
                assert secret not in text
            assert digest(code) in text
        finally:
            await store.close()
