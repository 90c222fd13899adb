"""PostgreSQL sink: batched binary COPY into a staging table, then an idempotent insert into `audit_records`.

Why a staging table: COPY cannot skip rows that already exist, and a replay of the spool resends records that may
have reached the table before the connection broke. `INSERT ... SELECT ... ON CONFLICT DO NOTHING` from the
(temporary, per-connection) staging table makes every write idempotent on the record's primary key (id, ts). The
chain heads (`audit_chain_heads`) move in the same transaction, so `audit verify` sees rows and heads agree.
"""

from __future__ import annotations

import operator
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from gateway.audit.record import COLUMNS as RECORD_COLUMNS
from gateway.audit.record import FIELDS, JSON_FIELDS, TIME_FIELDS
from gateway.pacing import Slice, paced

# PostgreSQL type of every record field (must agree with gateway/db/migrations/002_audit_records.sql)
COLUMN_TYPES: dict[str, str] = {
    "id": "uuid",
    "ts": "timestamptz",
    "started_at": "timestamptz",
    "http_status": "integer",
    "rpc_error_code": "integer",
    "upstream_status": "integer",
    "latency_ms": "double precision",
    "upstream_latency_ms": "double precision",
    "bytes_in": "bigint",
    "bytes_out": "bigint",
    "shadow": "jsonb",
    "arguments": "jsonb",
    "notes": "jsonb",
    "seq": "bigint",
}
# the columns of `to_row`, and those of `copy_row`: every field, then the trace ids (migration 006)
COLUMNS = ", ".join(FIELDS)
COPY_COLUMNS = ", ".join(RECORD_COLUMNS)
STAGE_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS audit_stage ("
    + ", ".join(f"{f} {COLUMN_TYPES.get(f, 'text')}" for f in RECORD_COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)
INSERT_SQL = f"INSERT INTO audit_records ({COPY_COLUMNS}) SELECT {COPY_COLUMNS} FROM audit_stage ON CONFLICT DO NOTHING"
HEADS_SQL = """
INSERT INTO audit_chain_heads AS h (writer_id, last_seq, last_hash, updated_at)
SELECT DISTINCT ON (writer_id) writer_id, seq, hash, now() FROM audit_stage ORDER BY writer_id, seq DESC
ON CONFLICT (writer_id) DO UPDATE SET last_seq = EXCLUDED.last_seq, last_hash = EXCLUDED.last_hash,
    updated_at = EXCLUDED.updated_at
WHERE h.last_seq < EXCLUDED.last_seq
"""
# both statements in one simple-query round trip (in order, inside the batch's transaction; the first error stops it)
MOVE_SQL = f"{INSERT_SQL};\n{HEADS_SQL}"


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


_ROW = operator.itemgetter(*FIELDS)
_ID = FIELDS.index("id")
_TS = FIELDS.index("ts")
_TIMES = tuple(i for i, f in enumerate(FIELDS) if f in TIME_FIELDS)
_JSONS = tuple(i for i, f in enumerate(FIELDS) if f in JSON_FIELDS)


def _canonical_uuid(v: object) -> bool:
    # asyncpg's uuid encoder parses a str in C; for this shape it accepts exactly what uuid.UUID accepts (32 hex
    # digits once the four dashes are gone), so the column gets the same value and a bad one the same ValueError
    return type(v) is str and len(v) == 36 and v[8] == "-" and v[13] == "-" and v[18] == "-" and v[23] == "-"


def to_row(rec: dict[str, Any]) -> tuple[Any, ...]:
    # one C-level fetch of all columns, then only the five fields that need converting: a per-field loop with
    # membership tests cost ~3 us a record, and a uuid.UUID object ~1 us more (asyncpg re-reads its .bytes)
    try:
        row = list(_ROW(rec))
    except KeyError:
        row = [rec.get(f) for f in FIELDS]
    v = row[_ID]
    if v is not None and not _canonical_uuid(v):
        row[_ID] = uuid.UUID(v)
    for i in _TIMES:
        v = row[i]
        if v is not None:
            row[i] = _ts(v)
    for i in _JSONS:
        v = row[i]
        if v is not None:
            row[i] = orjson.dumps(v).decode()
    return tuple(row)


def copy_row(rec: dict[str, Any]) -> tuple[Any, ...]:
    """The COPY row of a record: `to_row`, then its trace ids (NULL in the record of an untraced request)."""
    return (*to_row(rec), rec.get("trace_id"), rec.get("span_id"))


def is_data_error(exc: BaseException) -> bool:
    """A record PostgreSQL will never accept (bad value), as opposed to PostgreSQL being unavailable."""
    return isinstance(
        exc,
        asyncpg.DataError | asyncpg.IntegrityConstraintViolationError | OverflowError | ValueError | TypeError,
    )


def record_days(records: list[dict[str, Any]]) -> set[date]:
    return {_ts(r["ts"]).date() for r in records}


class PostgresSink:
    name = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        partitions_ahead_days: int = 3,
        retention_days: int = 30,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
    ) -> None:
        self._dsn = dsn
        self._ahead = partitions_ahead_days
        self._retention_days = retention_days
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._conn: asyncpg.Connection | None = None
        self._known_days: set[date] = set()

    async def connect(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        self._known_days.clear()
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            command_timeout=self._command_timeout,
            server_settings={"application_name": "mcp-gateway-audit"},
        )
        try:
            await conn.execute(STAGE_DDL)
            today = datetime.now(UTC).date()
            await self._ensure_partitions(conn, today, today + timedelta(days=self._ahead))
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn

    async def _ensure_partitions(self, conn: asyncpg.Connection, first: date, last: date) -> None:
        await conn.execute("SELECT audit_ensure_partitions($1::date, $2::date)", first, last)
        day = first
        while day <= last:
            self._known_days.add(day)
            day += timedelta(days=1)

    def is_data_error(self, exc: BaseException) -> bool:
        return is_data_error(exc)

    async def write(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        await self.connect()
        conn = self._conn
        assert conn is not None
        try:
            try:
                await self._write(conn, records)
            except asyncpg.CheckViolationError:
                # a partition this process believed in is gone (retention elsewhere): re-check and retry once
                self._known_days.clear()
                await self._write(conn, records)
        except BaseException as exc:
            if not is_data_error(exc):  # after a data error the transaction rolled back; the connection is fine
                await self._drop_connection()
            raise

    async def _write(self, conn: asyncpg.Connection, records: list[dict[str, Any]]) -> None:
        # rows are converted, and encoded by COPY, a time slice at a time: a batch done in one go held the event
        # loop for milliseconds (gateway/pacing.py)
        rows: list[tuple[Any, ...]] = []
        slice_ = Slice()
        for r in records:
            rows.append(copy_row(r))
            if slice_.spent():
                await slice_.next()
        try:
            # the rows hold the parsed times already: parsing every `ts` again cost ~0.5 us a record
            days = {row[_TS].date() for row in rows}
        except AttributeError:
            days = record_days(records)  # a record without `ts`: fails as it always did
        missing = days - self._known_days
        if missing:
            await self._ensure_partitions(conn, min(missing), max(missing))
        async with conn.transaction():
            await conn.copy_records_to_table("audit_stage", records=paced(rows), columns=list(RECORD_COLUMNS))
            await conn.execute(MOVE_SQL)

    async def maintain(self) -> int:
        """Create partitions ahead and drop those older than the retention policy."""
        await self.connect()
        conn = self._conn
        assert conn is not None
        try:
            today = datetime.now(UTC).date()
            await self._ensure_partitions(conn, today, today + timedelta(days=self._ahead))
            dropped = await conn.fetch(
                "SELECT audit_drop_partitions_before($1::date) AS name", today - timedelta(days=self._retention_days)
            )
            if dropped:
                self._known_days = {d for d in self._known_days if d >= today - timedelta(days=self._retention_days)}
        except BaseException:
            await self._drop_connection()
            raise
        return len(dropped)

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close(timeout=5)
            except Exception:
                conn.terminate()
