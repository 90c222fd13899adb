"""A throw-away database on a PostgreSQL server: created (and migrated), handed out, dropped whatever happens.

Used by `mcp-gateway audit bench --dsn` and by the tests that need a database of their own on a shared server.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator

import asyncpg

from gateway.db.migrate import migrate


def with_db(dsn: str, dbname: str) -> str:
    """`dsn` pointed at another database on the same server."""
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{dbname}"


@contextlib.asynccontextmanager
async def scratch_database(
    server_dsn: str, *, prefix: str = "mgw_scratch_", migrated: bool = True
) -> AsyncIterator[str]:
    """The DSN of a new database `<prefix><random>` on the server behind `server_dsn` (needs CREATEDB), migrated
    unless told not to; dropped (connections forced off) when the block ends."""
    name = f"{prefix}{secrets.token_hex(6)}"
    admin = await asyncpg.connect(server_dsn, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        dsn = with_db(server_dsn, name)
        if migrated:
            await migrate(dsn)
        yield dsn
    finally:
        admin = await asyncpg.connect(server_dsn, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
