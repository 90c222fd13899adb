"""The PostgreSQL key store (production): table `mgw_api_keys` (migration 010).

`KeyRepository` is plain data access, shared by the request path, the admin API and the CLI. `PostgresKeyStore`
is what authn asks: a positive cache keyed by the full key hash (a wrong secret never meets a cached entry), a
short-lived row cache by id (unknown ids and wrong secrets do not reach the database every time), one query per id
in flight (concurrent misses share it), and a bounded wait. asyncpg is asynchronous, so a lookup never blocks the
event loop; a database that does not answer becomes a 503, never a 401 for a key that may be valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from gateway.auth.keyrecord import KeyRecord, tool_matcher
from gateway.errors import ServiceUnavailable

log = structlog.get_logger("gateway.auth.pgkeys")

_COLUMNS = (
    "id, hash, tenant, scopes, role, allow_ips, tools_allow, tools_deny, description, "
    "created_at, expires_at, revoked_at"
)


def record_from_row(row: Any) -> KeyRecord:
    expires: datetime | None = row["expires_at"]
    return KeyRecord(
        id=row["id"],
        hash=row["hash"],
        tenant=row["tenant"],
        scopes=frozenset(row["scopes"]),
        role=row["role"],
        networks=tuple(ipaddress.ip_network(n, strict=False) for n in row["allow_ips"]),
        expires_at=expires.timestamp() if expires is not None else None,
        revoked=row["revoked_at"] is not None,
        tools=tool_matcher(list(row["tools_allow"]), list(row["tools_deny"]), shadow=False),
        source="postgres",
    )


@dataclass(frozen=True, slots=True)
class NewKey:
    id: str
    hash: str
    tenant: str
    scopes: Sequence[str]
    role: str = "user"
    allow_ips: Sequence[str] = ()
    tools_allow: Sequence[str] = ()
    tools_deny: Sequence[str] = ()
    description: str = ""
    expires_at: datetime | None = None


class KeyExists(Exception):
    pass


class KeyRepository:
    """SQL of the key table. Takes a pool or a connection (anything with fetch/fetchrow/execute)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    async def get(self, key_id: str) -> Any:
        return await self._db.fetchrow(f"SELECT {_COLUMNS} FROM mgw_api_keys WHERE id = $1", key_id)

    async def create(self, key: NewKey) -> Any:
        try:
            return await self._db.fetchrow(
                f"""INSERT INTO mgw_api_keys (id, hash, tenant, scopes, role, allow_ips, tools_allow, tools_deny,
                                              description, expires_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {_COLUMNS}""",
                key.id,
                key.hash,
                key.tenant,
                list(key.scopes),
                key.role,
                [ipaddress.ip_network(c, strict=False) for c in key.allow_ips],
                list(key.tools_allow),
                list(key.tools_deny),
                key.description,
                key.expires_at,
            )
        except asyncpg.UniqueViolationError:
            raise KeyExists(key.id) from None

    async def list(self, tenant: str | None = None) -> list[Any]:
        sql = f"""SELECT {_COLUMNS}, u.request_count, u.last_used_at FROM mgw_api_keys k
                  LEFT JOIN mgw_api_key_usage u ON u.key_id = k.id"""
        if tenant is None:
            return list(await self._db.fetch(sql + " ORDER BY k.tenant, k.id"))
        return list(await self._db.fetch(sql + " WHERE k.tenant = $1 ORDER BY k.id", tenant))

    async def revoke(self, key_id: str, tenant: str | None = None) -> bool:
        """Mark revoked (kept for audit); False when no such key (of that tenant) exists."""
        if tenant is None:
            status = await self._db.execute(
                "UPDATE mgw_api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1", key_id
            )
        else:
            status = await self._db.execute(
                "UPDATE mgw_api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 AND tenant = $2",
                key_id,
                tenant,
            )
        return bool(status.endswith(" 1"))

    async def add_usage(self, counts: Sequence[tuple[str, int, datetime]]) -> None:
        await self._db.executemany(
            """INSERT INTO mgw_api_key_usage AS u (key_id, request_count, last_used_at) VALUES ($1, $2, $3)
               ON CONFLICT (key_id) DO UPDATE
               SET request_count = u.request_count + excluded.request_count,
                   last_used_at = greatest(u.last_used_at, excluded.last_used_at)""",
            counts,
        )


_MAX_ENTRIES = 10_000


class PostgresKeyStore:
    def __init__(
        self, dsn: str, *, pool_size: int, ttl: float, negative_ttl: float, timeout: float, on_lookup: Any = None
    ) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._by_hash: dict[str, tuple[KeyRecord, float]] = {}
        self._by_id: dict[str, tuple[KeyRecord | None, float]] = {}
        self._inflight: dict[str, asyncio.Task[KeyRecord | None]] = {}
        self._on_lookup = on_lookup  # metrics hook: "hit", "miss", "error"

    async def pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=1, max_size=self._pool_size, timeout=self._timeout, command_timeout=10
                )
            return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _count(self, what: str) -> None:
        if self._on_lookup is not None:
            self._on_lookup(what)

    def invalidate(self, key_id: str) -> None:
        """Forget a key now (this process revoked it); other replicas notice within the cache TTL."""
        self._by_id.pop(key_id, None)
        for digest in [d for d, (rec, _) in self._by_hash.items() if rec.id == key_id]:
            del self._by_hash[digest]

    def recheck(self, key_id: str, digest: str | None) -> bool | None:
        """Whether a key verified earlier is still valid, from what this process knows now and without waiting:
        False when it is revoked, expired, deleted or its hash changed, None when nothing is cached. A stale or
        missing entry starts a refresh (one query per id in flight), so a revocation made through another replica
        reaches an open connection within the cache TTL."""
        row = self._by_id.get(key_id)
        if row is None or row[1] <= time.monotonic():
            self.refresh_soon(key_id)
        if row is None:
            return None
        rec = row[0]
        if rec is None or rec.revoked:
            return False
        if rec.expires_at is not None and rec.expires_at <= time.time():
            return False
        return digest is None or hmac.compare_digest(rec.hash, digest)

    def refresh_soon(self, key_id: str) -> None:
        """Fetch the key's row in the background (a failure keeps what is cached)."""
        if key_id not in self._inflight:
            task = asyncio.create_task(self._fetch_and_remember(key_id))
            self._inflight[key_id] = task
            task.add_done_callback(lambda t: self._settled(key_id, t))

    async def refresh(self, key_id: str) -> None:
        """Fetch the key's row now (after this process changed it), so open connections see the change."""
        self.invalidate(key_id)
        with contextlib.suppress(ServiceUnavailable):  # the change is made; the cache is simply empty then
            await self._fetch_shared(key_id)

    async def lookup(self, key_id: str, digest: str) -> KeyRecord | None:
        """The key whose stored hash equals `digest`, or None. Raises ServiceUnavailable if the store is down."""
        now = time.monotonic()
        hit = self._by_hash.get(digest)
        if hit is not None and hit[1] > now:
            self._count("hit")
            return hit[0]
        row = self._by_id.get(key_id)
        if row is not None and row[1] > now:
            self._count("hit")
            rec = row[0]
        else:
            self._count("miss")
            rec = await self._fetch_shared(key_id)
        if rec is None or not hmac.compare_digest(rec.hash, digest):
            return None
        self._remember(self._by_hash, digest, (rec, time.monotonic() + self._ttl))
        return rec

    async def current(self, key_id: str) -> KeyRecord | None:
        """The key with this id as the store has it (cached like lookups), whatever its hash: for credentials
        derived from a key (gateway/oauth/), which check the hash's fingerprint themselves."""
        row = self._by_id.get(key_id)
        if row is not None and row[1] > time.monotonic():
            self._count("hit")
            return row[0]
        self._count("miss")
        return await self._fetch_shared(key_id)

    async def _fetch_shared(self, key_id: str) -> KeyRecord | None:
        # one query per id in flight, run as its own task: a requester that goes away (client disconnect) does
        # not cancel the query the others are waiting for
        self.refresh_soon(key_id)
        return await asyncio.shield(self._inflight[key_id])

    def _settled(self, key_id: str, task: asyncio.Task[KeyRecord | None]) -> None:
        self._inflight.pop(key_id, None)
        if not task.cancelled():
            task.exception()  # retrieved, so a failure nobody waited for does not warn

    async def _fetch_and_remember(self, key_id: str) -> KeyRecord | None:
        rec = await self._fetch(key_id)
        ttl = self._ttl if rec is not None else self._negative_ttl
        self._remember(self._by_id, key_id, (rec, time.monotonic() + ttl))
        return rec

    async def _fetch(self, key_id: str) -> KeyRecord | None:
        try:
            async with asyncio.timeout(self._timeout):
                pool = await self.pool()
                row = await KeyRepository(pool).get(key_id)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._count("error")
            log.warning("API key store unavailable", error=type(exc).__name__)
            raise ServiceUnavailable(
                "API key store unavailable", reason="key_store_unavailable", retry_after=5
            ) from None
        return record_from_row(row) if row is not None else None

    @staticmethod
    def _remember(cache: dict[str, Any], key: str, value: Any) -> None:
        if len(cache) >= _MAX_ENTRIES:
            cache.clear()  # crude but bounded: ids and hashes come from clients
        cache[key] = value
