"""The PostgreSQL store (migration 040_oauth_server.sql): shared by every replica and worker. Single use is one
`UPDATE ... WHERE used_at IS NULL RETURNING`, so of two replicas presenting one code or refresh token only one wins.
A database that does not answer becomes a 503 `temporarily_unavailable` (gateway/oauth/errors.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog

from gateway.oauth.errors import OAuthError
from gateway.oauth.model import Client, CodeGrant, Grant
from gateway.oauth.store import UseStatus

log = structlog.get_logger("gateway.oauth.pgstore")

_MARK = """UPDATE {table} SET used_at = now()
  WHERE {key} = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now() RETURNING doc"""
_STATE = "SELECT doc, used_at, revoked_at FROM {table} WHERE {key} = $1"


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _doc(raw: Any) -> dict[str, Any]:
    value = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    if not isinstance(value, dict):
        raise ValueError("stored document is not an object")
    return value


_ADD_CLIENT = """INSERT INTO mgw_oauth_clients (client_id, doc)
   SELECT $1, $2::jsonb WHERE (SELECT count(*) FROM mgw_oauth_clients) < $3
   RETURNING client_id"""


class PostgresStore:
    def __init__(self, dsn: str, pool_size: int, timeout: float = 2.0) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn, min_size=1, max_size=self._pool_size, timeout=self._timeout, command_timeout=5
                    )
        return self._pool

    async def _run(self, fn: str, *args: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout * 2):
                pool = await self._db()
                return await getattr(pool, fn)(*args)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("OAuth store unavailable", error=type(exc).__name__)
            raise OAuthError(
                "temporarily_unavailable", "authorization state is unavailable", reason="store_unavailable", status=503
            ) from None

    async def add_client(self, client: Client, limit: int, unclaimed_ttl: float) -> bool:
        # the count and the insert in one statement: concurrent registrations cannot overshoot by much more than
        # the number of replicas
        doc = orjson.dumps(client.to_doc()).decode()
        row = await self._run("fetchrow", _ADD_CLIENT, client.client_id, doc, limit)
        if row is None:
            # full: unclaimed registrations past their time go first (the hourly prune may not have run yet)
            await self.drop_unclaimed(unclaimed_ttl)
            row = await self._run("fetchrow", _ADD_CLIENT, client.client_id, doc, limit)
        return row is not None

    async def drop_unclaimed(self, unclaimed_ttl: float) -> None:
        await self._run(
            "execute",
            """DELETE FROM mgw_oauth_clients
               WHERE claimed_at IS NULL AND created_at < now() - make_interval(secs => $1)""",
            unclaimed_ttl,
        )

    async def claim_client(self, client_id: str) -> None:
        await self._run(
            "execute",
            "UPDATE mgw_oauth_clients SET claimed_at = now() WHERE client_id = $1 AND claimed_at IS NULL",
            client_id,
        )

    async def client(self, client_id: str) -> Client | None:
        row = await self._run("fetchrow", "SELECT doc FROM mgw_oauth_clients WHERE client_id = $1", client_id)
        return Client.from_doc(_doc(row["doc"])) if row is not None else None

    async def put_code(self, code_hash: str, code: CodeGrant, expires_at: float) -> None:
        await self._run(
            "execute",
            "INSERT INTO mgw_oauth_codes (code_hash, family, doc, expires_at) VALUES ($1, $2, $3::jsonb, $4)",
            code_hash,
            code.grant.family,
            orjson.dumps(code.to_doc()).decode(),
            _ts(expires_at),
        )

    async def _use(self, table: str, key: str, value: str) -> tuple[dict[str, Any] | None, UseStatus]:
        # the UPDATE is the single-use decision (row lock: of two concurrent callers one marks, one finds it used);
        # the SELECT after a miss only tells the loser why
        won = await self._run("fetchrow", _MARK.format(table=table, key=key), value)
        if won is not None:
            return _doc(won["doc"]), "ok"
        row = await self._run("fetchrow", _STATE.format(table=table, key=key), value)
        if row is None:
            return None, "unknown"
        doc = _doc(row["doc"])
        if row["revoked_at"] is not None:
            return doc, "revoked"
        if row["used_at"] is not None:
            return doc, "replayed"
        return None, "expired"

    async def use_code(self, code_hash: str) -> tuple[CodeGrant | None, UseStatus]:
        doc, status = await self._use("mgw_oauth_codes", "code_hash", code_hash)
        return (CodeGrant.from_doc(doc) if doc is not None else None), status

    async def put_refresh(self, token_hash: str, grant: Grant, expires_at: float) -> None:
        await self._run(
            "execute",
            """INSERT INTO mgw_oauth_refresh_tokens (token_hash, family, doc, expires_at)
               VALUES ($1, $2, $3::jsonb, $4)""",
            token_hash,
            grant.family,
            orjson.dumps(grant.to_doc()).decode(),
            _ts(expires_at),
        )

    async def use_refresh(self, token_hash: str) -> tuple[Grant | None, UseStatus]:
        doc, status = await self._use("mgw_oauth_refresh_tokens", "token_hash", token_hash)
        return (Grant.from_doc(doc) if doc is not None else None), status

    async def find_refresh(self, token_hash: str) -> Grant | None:
        row = await self._run("fetchrow", "SELECT doc FROM mgw_oauth_refresh_tokens WHERE token_hash = $1", token_hash)
        return Grant.from_doc(_doc(row["doc"])) if row is not None else None

    async def revoke_family(self, family: str) -> None:
        for table in ("mgw_oauth_codes", "mgw_oauth_refresh_tokens"):
            await self._run(
                "execute", f"UPDATE {table} SET revoked_at = now() WHERE family = $1 AND revoked_at IS NULL", family
            )

    async def prune(self, unclaimed_ttl: float) -> None:
        """Drop what expired a day ago (kept that long so a late replay is still recognized as one), and the
        registrations no user approved within `unclaimed_ttl` seconds."""
        for table in ("mgw_oauth_codes", "mgw_oauth_refresh_tokens"):
            await self._run("execute", f"DELETE FROM {table} WHERE expires_at < now() - interval '1 day'")
        await self.drop_unclaimed(unclaimed_ttl)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
