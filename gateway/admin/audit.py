"""Admin API: `GET /admin/audit` queries audit records of one tenant: the caller's (an operator may name another
with `?tenant=`; a tenant admin naming another tenant is refused, 403 `tenant_mismatch`).

Tenant scoping is PostgreSQL's job, not this module's: every query runs in a read-only transaction that switches
to the `mgw_audit_reader` role (no BYPASSRLS, not the owner; the table has FORCE ROW LEVEL SECURITY) and sets
`app.tenant` to the caller's tenant, transaction-locally. Whatever filters a caller sends, the row-level security
policy only lets rows of that tenant through. Pages are keyset-paginated on (ts, id), newest first.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog
from aiohttp import web

from gateway.admin import paging
from gateway.admin.audited import AdminAction, AdminGate
from gateway.admin.model import is_operator
from gateway.audit.record import FIELDS, ts_from_datetime
from gateway.audit.verify import record_from_row
from gateway.auth.principal import Principal
from gateway.errors import Forbidden, InvalidRequest, ServiceUnavailable
from gateway.settings import Settings

log = structlog.get_logger("gateway.admin.audit")

READER_ROLE = "mgw_audit_reader"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
DECISIONS = frozenset({"allowed", "refused", "error", "cancelled"})
# record columns returned by the API (the chain fields stay: they let a client spot-check a record)
API_COLUMNS = ", ".join(FIELDS)


class AuditReader:
    """A small asyncpg pool on the reader DSN; created empty, so PostgreSQL being down never blocks startup."""

    def __init__(self, dsn: str, pool_size: int) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=0, max_size=self._pool_size, timeout=5, command_timeout=15
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def fetch(self, tenant: str, sql: str, params: list[Any]) -> list[asyncpg.Record]:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            # both settings are transaction-local: a pooled connection never carries a tenant or role onwards
            await conn.execute(f"SET LOCAL ROLE {READER_ROLE}")
            await conn.execute("SELECT set_config('app.tenant', $1, true)", tenant)
            rows: list[asyncpg.Record] = await conn.fetch(sql, *params)
            return rows


@dataclass(frozen=True, slots=True)
class AuditQuery:
    start: datetime | None = None
    end: datetime | None = None
    server: str | None = None
    method: str | None = None
    decision: str | None = None
    stage: str | None = None
    request_id: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: tuple[datetime, uuid.UUID] | None = None

    def sql(self) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []

        def add(cond: str, value: Any) -> None:
            params.append(value)
            where.append(cond.format(f"${len(params)}"))

        if self.start is not None:
            add("ts >= {}", self.start)
        if self.end is not None:
            add("ts < {}", self.end)
        if self.server is not None:
            add("server = {}", self.server)
        if self.method is not None:
            add("rpc_method = {}", self.method)
        if self.decision is not None:
            add("decision = {}", self.decision)
        if self.stage is not None:
            add("stage = {}", self.stage)
        if self.request_id is not None:
            add("request_id = {}", self.request_id)
        if self.cursor is not None:
            params.extend(self.cursor)
            where.append(f"(ts, id) < (${len(params) - 1}, ${len(params)})")
        params.append(self.limit + 1)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        sql = f"SELECT {API_COLUMNS} FROM audit_records {clause}ORDER BY ts DESC, id DESC LIMIT ${len(params)}"
        return sql, params


def _parse_time(name: str, value: str) -> datetime:
    try:
        if value.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(value), UTC)
        dt = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise InvalidRequest(f"{name} must be ISO 8601 or Unix seconds", reason="bad_query") from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def encode_cursor(ts: datetime, rec_id: uuid.UUID) -> str:
    return paging.encode_cursor((ts_from_datetime(ts), str(rec_id)))


def _decode_cursor(value: str) -> tuple[datetime, uuid.UUID]:
    # the shared decoder checks the shape (two strings): a forged `[ts, 1]` was a 500 before (red team)
    ts, rec_id = paging.decode_cursor(value, 2)
    try:
        return datetime.fromisoformat(ts), uuid.UUID(rec_id)
    except ValueError:
        raise InvalidRequest("cursor is not valid", reason="bad_cursor") from None


def parse_query(q: Any) -> AuditQuery:
    def opt(name: str, max_len: int = 256) -> str | None:
        v = q.get(name)
        if v is None or v == "":
            return None
        if len(v) > max_len or "\x00" in v:
            raise InvalidRequest(f"{name} is too long or not text", reason="bad_query")
        return str(v)

    decision = opt("decision")
    if decision is not None and decision not in DECISIONS:
        raise InvalidRequest(f"decision must be one of {sorted(DECISIONS)}", reason="bad_query")
    limit_s = opt("limit", 8)
    try:
        limit = DEFAULT_LIMIT if limit_s is None else int(limit_s)
    except ValueError:
        raise InvalidRequest("limit must be an integer", reason="bad_query") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be 1..{MAX_LIMIT}", reason="bad_query")
    start = opt("from", 64)
    end = opt("to", 64)
    cursor = opt("cursor", 512)
    return AuditQuery(
        start=None if start is None else _parse_time("from", start),
        end=None if end is None else _parse_time("to", end),
        server=opt("server"),
        method=opt("method"),
        decision=decision,
        stage=opt("stage", 64),
        request_id=opt("request_id", 128),
        limit=limit,
        cursor=None if cursor is None else _decode_cursor(cursor),
    )


def _query(gate: AdminGate, reader: AuditReader | None) -> AdminAction:
    async def query(request: web.Request, principal: Principal) -> web.Response:
        """A tenant admin reads its own tenant's trail; an operator any tenant's (`?tenant=`, default its own)."""
        wanted = request.query.get("tenant") or None
        if wanted is not None and (len(wanted) > 128 or not wanted.isprintable()):
            raise InvalidRequest("tenant is too long or not text", reason="bad_query")
        if wanted is not None and wanted != principal.tenant:
            gate.set_target_tenant(request, wanted)
            if not is_operator(principal):
                raise Forbidden("the audit trail of another tenant", reason="tenant_mismatch", stage="authz")
            return await _answer(reader, request, wanted)
        return await _answer(reader, request, principal.tenant)

    return query


async def _answer(reader: AuditReader | None, request: web.Request, tenant: str | None) -> web.Response:
    if reader is None:
        raise ServiceUnavailable(
            "audit queries need PostgreSQL (postgres.dsn or postgres.reader_dsn)",
            reason="audit_store_unconfigured",
            retry_after=60,
        )
    if tenant is None:
        raise InvalidRequest("the admin credential has no tenant to scope the audit query", reason="tenant_required")
    query = parse_query(request.query)
    sql, params = query.sql()
    try:
        rows = await reader.fetch(tenant, sql, params)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("audit query failed", error=type(exc).__name__)
        raise ServiceUnavailable("audit store unavailable", reason="audit_store_unavailable", retry_after=5) from None
    page = rows[: query.limit]
    next_cursor = encode_cursor(page[-1]["ts"], page[-1]["id"]) if len(rows) > query.limit else None
    body = {"records": [record_from_row(r) for r in page], "next_cursor": next_cursor, "tenant": tenant}
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers={"Cache-Control": "no-store"})


def install_routes(app: web.Application, settings: Settings, gate: AdminGate) -> None:
    dsn = settings.postgres.reader_dsn or settings.postgres.dsn
    reader: AuditReader | None = None
    if dsn is not None:
        reader = started = AuditReader(dsn, settings.postgres.pool_size)

        async def lifecycle(_: web.Application) -> AsyncIterator[None]:
            await started.start()
            yield
            await started.close()

        app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/admin/audit", gate.route("admin/audit.query", _query(gate, reader)))
