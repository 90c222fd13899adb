"""Reading audit records back for verification: from a JSONL file, or from PostgreSQL in one consistent snapshot."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from gateway.audit.hashchain import Anchor, ChainVerifier, VerifyReport, iter_jsonl, verify_records
from gateway.audit.record import COLUMNS, FIELDS, JSON_FIELDS, TRACE_FIELDS, ts_from_datetime


def verify_file(path: str) -> VerifyReport:
    return verify_records(iter_jsonl(path), where="line")


def record_from_row(row: asyncpg.Record) -> dict[str, Any]:
    """A PostgreSQL row in the exact shape the writer hashed."""
    rec: dict[str, Any] = {}
    for name in FIELDS:
        v = row[name]
        if isinstance(v, datetime):
            v = ts_from_datetime(v)
        elif isinstance(v, uuid.UUID):
            v = str(v)
        elif name in JSON_FIELDS and isinstance(v, str):
            v = orjson.loads(v)
        rec[name] = v
    for name in TRACE_FIELDS:
        # in the record only when the request was traced (NULL: it was not); a query may leave them out
        v = row.get(name)
        if v is not None:
            rec[name] = v
    return rec


async def verify_postgres(dsn: str, *, batch: int = 5000) -> VerifyReport:
    """Check every writer's chain against its head and anchor, reading rows and heads in one snapshot."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            heads = await conn.fetch(
                "SELECT writer_id, anchor_seq, anchor_hash, last_seq, last_hash FROM audit_chain_heads"
            )
            anchors = {
                r["writer_id"]: Anchor(r["anchor_seq"], r["anchor_hash"], r["last_seq"], r["last_hash"]) for r in heads
            }
            verifier = ChainVerifier(anchors, where="row", require_heads=True)
            cur = conn.cursor(f"SELECT {', '.join(COLUMNS)} FROM audit_records ORDER BY writer_id, seq", prefetch=batch)
            async for row in cur:
                verifier.add(record_from_row(row))
    finally:
        await conn.close()
    return verifier.finish()
