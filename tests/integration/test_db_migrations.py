"""Migrations, partitions, retention and row-level security against a real PostgreSQL (own database per test)."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from gateway.audit.hashchain import HashChain
from gateway.audit.postgres import PostgresSink
from gateway.db.migrate import discover, migrate
from gateway.db.scratch import scratch_database
from tests.harness import PYTHON, ROOT

pytestmark = pytest.mark.integration


def temp_database(server_dsn: str, *, migrated: bool = True) -> contextlib.AbstractAsyncContextManager[str]:
    """A database of the test's own (`mgw_test_<random>`), migrated, dropped afterwards."""
    return scratch_database(server_dsn, prefix="mgw_test_", migrated=migrated)


def record(tenant: str, ts: datetime, chain: HashChain, **extra: object) -> dict[str, object]:
    """A sealed record as the writer makes it (every field present)."""
    from gateway.audit.record import FIELDS

    rec: dict[str, object] = {f: None for f in FIELDS if f not in ("writer_id", "seq", "prev_hash", "hash")}
    rec.update(
        id=str(__import__("uuid").uuid4()),
        ts=ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        started_at=ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        request_id=secrets.token_hex(4),
        tenant=tenant,
        server="example",
        transport="streamable-http",
        decision="allowed",
        risk="low",
        bytes_in=10,
        bytes_out=20,
    )
    rec.update(extra)
    return chain.seal(rec)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "gateway", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


async def test_migrate_applies_every_file_once_and_records_versions(postgres_dsn: str) -> None:
    async with temp_database(postgres_dsn, migrated=False) as dsn:
        first = await migrate(dsn)
        assert [m.version for m in first.applied] == [m.version for m in discover()]
        again = await migrate(dsn)
        assert again.applied == [] and again.already == [m.version for m in discover()]
        conn = await asyncpg.connect(dsn)
        try:
            versions = [r["version"] for r in await conn.fetch("SELECT version FROM mgw_schema_migrations ORDER BY 1")]
            assert versions == [m.version for m in discover()]
            kind = await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'audit_records'")
            assert kind == "p"  # partitioned
            forced = await conn.fetchval("SELECT relforcerowsecurity FROM pg_class WHERE relname = 'audit_records'")
            assert forced is True
        finally:
            await conn.close()
        # the CLI reports nothing pending
        status = cli("db", "status", "--dsn", dsn)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "pending" not in status.stdout


async def test_partitions_ahead_and_retention_drops_old_days_keeping_chain_verifiable(postgres_dsn: str) -> None:
    async with temp_database(postgres_dsn) as dsn:
        sink = PostgresSink(dsn, partitions_ahead_days=2, retention_days=3)
        chain = HashChain()
        now = datetime.now(UTC)
        # ten days of records from one writer, oldest first (records are chained in time order)
        recs = [record("acme", now - timedelta(days=d), chain) for d in range(9, -1, -1)]
        try:
            await sink.write(recs)
            conn = await asyncpg.connect(dsn)
            try:
                parts = {
                    r["relname"]
                    for r in await conn.fetch(
                        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhparent = 'audit_records'::regclass"
                    )
                }
                ahead = (now + timedelta(days=2)).strftime("audit_records_p%Y%m%d")
                oldest = (now - timedelta(days=9)).strftime("audit_records_p%Y%m%d")
                assert ahead in parts and oldest in parts
                dropped = await sink.maintain()
                # a partition goes only once all of it is older than the policy: days 9..4 ago
                assert dropped == 6
                left = await conn.fetchval("SELECT count(*) FROM audit_records")
                assert left == 4
                oldest_left = await conn.fetchval("SELECT min(ts) FROM audit_records")
                assert oldest_left >= (now - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
                assert oldest not in {
                    r["relname"]
                    for r in await conn.fetch(
                        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhparent = 'audit_records'::regclass"
                    )
                }
                anchor = await conn.fetchval(
                    "SELECT anchor_seq FROM audit_chain_heads WHERE writer_id = $1", chain.writer_id
                )
                assert anchor == 6
            finally:
                await conn.close()
        finally:
            await sink.close()
        out = cli("audit", "verify", "--dsn", dsn)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "4 record(s) from 1 writer(s): ok" in out.stdout


async def test_row_level_security_scopes_reader_to_its_tenant(postgres_dsn: str) -> None:
    async with temp_database(postgres_dsn) as dsn:
        sink = PostgresSink(dsn)
        chain = HashChain()
        now = datetime.now(UTC)
        await sink.write([record(t, now, chain, server=s) for t in ("tenant-a", "tenant-b") for s in ("x", "y")])
        await sink.close()
        conn = await asyncpg.connect(dsn)
        try:

            async def as_reader(tenant: str | None, sql: str) -> list[asyncpg.Record]:
                async with conn.transaction():
                    await conn.execute("SET LOCAL ROLE mgw_audit_reader")
                    if tenant is not None:
                        await conn.execute("SELECT set_config('app.tenant', $1, true)", tenant)
                    return list(await conn.fetch(sql))

            rows = await as_reader("tenant-a", "SELECT tenant FROM audit_records")
            assert len(rows) == 2 and {r["tenant"] for r in rows} == {"tenant-a"}
            # filters naming the other tenant, or trying to get round the policy, still see nothing of it
            for sql in (
                "SELECT tenant FROM audit_records WHERE tenant = 'tenant-b'",
                "SELECT tenant FROM audit_records WHERE tenant <> 'tenant-a' OR true",
                "SELECT tenant FROM audit_server_summary WHERE tenant = 'tenant-b'",
                "SELECT tenant FROM audit_tenant_usage",
            ):
                assert all(r["tenant"] == "tenant-a" for r in await as_reader("tenant-a", sql)), sql
            usage = await as_reader("tenant-a", "SELECT tenant, requests FROM audit_tenant_usage")
            assert [(r["tenant"], r["requests"]) for r in usage] == [("tenant-a", 2)]
            # no tenant set: no rows at all
            assert await as_reader(None, "SELECT * FROM audit_records") == []
            # a partition cannot be read directly (it has no policy, so the reader has no grant on it)
            part = datetime.now(UTC).strftime("audit_records_p%Y%m%d")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await as_reader("tenant-a", f"SELECT * FROM {part}")
            # the reader cannot switch off RLS for itself: with row_security off, PostgreSQL refuses the query
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                async with conn.transaction():
                    await conn.execute("SET LOCAL ROLE mgw_audit_reader")
                    await conn.execute("SET LOCAL row_security = off")
                    await conn.fetch("SELECT * FROM audit_records")
        finally:
            await conn.close()


async def test_writer_role_can_insert_but_not_read_change_or_delete(postgres_dsn: str) -> None:
    async with temp_database(postgres_dsn) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SELECT audit_ensure_partitions(current_date, current_date)")
            chain = HashChain()
            rec = record("acme", datetime.now(UTC), chain)
            from gateway.audit.postgres import COLUMNS, to_row

            row = to_row(rec)
            placeholders = ", ".join(f"${i}" for i in range(1, len(row) + 1))
            async with conn.transaction():
                await conn.execute("SET LOCAL ROLE mgw_audit_writer")
                await conn.execute(f"INSERT INTO audit_records ({COLUMNS}) VALUES ({placeholders})", *row)
            for sql in (
                "SELECT * FROM audit_records",
                "UPDATE audit_records SET tenant = 'x'",
                "DELETE FROM audit_records",
                "TRUNCATE audit_records",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    async with conn.transaction():
                        await conn.execute("SET LOCAL ROLE mgw_audit_writer")
                        await conn.execute(sql)
            assert await conn.fetchval("SELECT count(*) FROM audit_records") == 1
        finally:
            await conn.close()


def test_migration_files_are_numbered_and_packaged() -> None:
    migs = discover()
    assert [m.version for m in migs] == sorted({m.version for m in migs})
    assert migs[0].version == 1
    assert all(Path(ROOT / "gateway/db/migrations" / m.name).exists() for m in migs)


async def test_gateway_login_roles_need_no_superuser(postgres_dsn: str, tmp_path: Path) -> None:
    """A writer login that is only a member of mgw_audit_writer can COPY, move heads, create and drop partitions;
    a reader login that is only a member of mgw_audit_reader gets its tenant's rows through the admin reader."""
    from gateway.admin.audit import AuditQuery, AuditReader

    suffix = secrets.token_hex(4)
    writer, reader = f"mgw_test_w_{suffix}", f"mgw_test_r_{suffix}"
    async with temp_database(postgres_dsn) as dsn:
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f"CREATE ROLE {writer} LOGIN IN ROLE mgw_audit_writer")
            await admin.execute(f"CREATE ROLE {reader} LOGIN IN ROLE mgw_audit_reader")
            base = dsn.replace("postgres@", "{}@", 1)
            sink = PostgresSink(base.format(writer), retention_days=2)
            chain = HashChain()
            now = datetime.now(UTC)
            try:
                recs = [record(t, now - timedelta(days=d), chain) for d in (5, 0) for t in ("a", "b")]
                await sink.write(recs)
                await sink.write(recs)  # a replay: ON CONFLICT DO NOTHING works without SELECT rights
                assert await sink.maintain() >= 1  # the 5-day-old partition goes (SECURITY DEFINER)
            finally:
                await sink.close()
            assert await admin.fetchval("SELECT count(*) FROM audit_records") == 2
            rdr = AuditReader(base.format(reader), 2)
            await rdr.start()
            try:
                sql, params = AuditQuery().sql()
                rows = await rdr.fetch("a", sql, params)
                assert [r["tenant"] for r in rows] == ["a"]
                assert await rdr.fetch("nobody", sql, params) == []
            finally:
                await rdr.close()
        finally:
            await admin.execute(f"DROP OWNED BY {writer}, {reader}")
            await admin.close()
            server = await asyncpg.connect(postgres_dsn)
            try:
                await server.execute(f"DROP ROLE IF EXISTS {writer}")
                await server.execute(f"DROP ROLE IF EXISTS {reader}")
            finally:
                await server.close()


async def test_failed_migration_leaves_nothing_half_applied_and_changed_files_are_reported(
    postgres_dsn: str, tmp_path: Path
) -> None:
    from gateway.db.migrate import MigrationError

    (tmp_path / "001_one.sql").write_text("CREATE TABLE t_one (x int);")
    (tmp_path / "002_broken.sql").write_text("CREATE TABLE t_two (x int); SELECT no_such_function();")
    (tmp_path / "notes.txt").write_text("not a migration")
    async with temp_database(postgres_dsn, migrated=False) as dsn:
        with pytest.raises(MigrationError, match=r"002_broken\.sql"):
            await migrate(dsn, tmp_path)
        conn = await asyncpg.connect(dsn)
        try:
            assert [r["version"] for r in await conn.fetch("SELECT version FROM mgw_schema_migrations")] == [1]
            assert await conn.fetchval("SELECT to_regclass('t_two') IS NULL")  # rolled back with its file
        finally:
            await conn.close()
        (tmp_path / "002_broken.sql").write_text("CREATE TABLE t_two (x int);")
        (tmp_path / "001_one.sql").write_text("CREATE TABLE t_one (x bigint);")  # edited after it was applied
        result = await migrate(dsn, tmp_path)
        assert [m.version for m in result.applied] == [2] and result.changed == ["001_one.sql"]
