"""Migration runner: applies every numbered SQL file in gateway/db/migrations in order, once.

Files are named `NNN_description.sql`; each runs in its own transaction and its version is recorded in
`mgw_schema_migrations` in the same transaction, so a failed file leaves nothing half-applied. A session-level
advisory lock serializes concurrent runs (several replicas starting at once). A recorded file whose content
changed since it was applied is reported, never re-run: migrations are append-only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

MIGRATION_NAME = re.compile(r"^(\d{3,})_[A-Za-z0-9_]+\.sql$")
LOCK_KEY = 0x6D67_7764  # "mgwd": one advisory lock id for every migration run

BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS mgw_schema_migrations (
  version    integer     PRIMARY KEY,
  name       text        NOT NULL,
  checksum   text        NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(slots=True)
class MigrateResult:
    applied: list[Migration]
    already: list[int]
    changed: list[str]


class MigrationError(Exception):
    pass


def default_directory() -> Path:
    return Path(str(resources.files("gateway.db").joinpath("migrations")))


def discover(directory: Path | None = None) -> list[Migration]:
    directory = directory or default_directory()
    found: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        m = MIGRATION_NAME.match(path.name)
        if m is None:
            continue
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"two migrations with version {version}: {found[version].name} and {path.name}")
        found[version] = Migration(version, path.name, path.read_text())
    return [found[v] for v in sorted(found)]


async def migrate(dsn: str, directory: Path | None = None, *, target: int | None = None) -> MigrateResult:
    migrations = [m for m in discover(directory) if target is None or m.version <= target]
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute(BOOKKEEPING)
            rows = await conn.fetch("SELECT version, name, checksum FROM mgw_schema_migrations")
            done = {r["version"]: r for r in rows}
            result = MigrateResult([], [], [])
            for mig in migrations:
                row = done.get(mig.version)
                if row is not None:
                    result.already.append(mig.version)
                    if row["checksum"] != mig.checksum:
                        result.changed.append(mig.name)
                    continue
                async with conn.transaction():
                    try:
                        await conn.execute(mig.sql)
                    except asyncpg.PostgresError as exc:
                        raise MigrationError(f"{mig.name}: {exc}") from exc
                    await conn.execute(
                        "INSERT INTO mgw_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        mig.version,
                        mig.name,
                        mig.checksum,
                    )
                result.applied.append(mig)
            return result
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()


async def applied_versions(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        exists = await conn.fetchval("SELECT to_regclass('mgw_schema_migrations') IS NOT NULL")
        if not exists:
            return []
        return [r["version"] for r in await conn.fetch("SELECT version FROM mgw_schema_migrations ORDER BY 1")]
    finally:
        await conn.close()
