"""The audit pipeline against a real PostgreSQL: COPY writes, idempotent replays, outage with spool, verify."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.audit.metrics import AuditMetrics
from gateway.audit.pipeline import AuditPipeline
from gateway.audit.postgres import PostgresSink
from gateway.audit.verify import verify_postgres
from gateway.auth.principal import Principal
from gateway.context import RequestContext
from gateway.jsonrpc import parse_message
from gateway.policy.servers import ServerPolicy
from gateway.settings import AuditSettings
from tests.harness import PostgresInstance
from tests.integration.test_db_migrations import cli, temp_database

pytestmark = pytest.mark.integration

SERVER = ServerPolicy.model_validate({"upstreams": [{"url": "http://u:1/mcp"}], "audit_arguments": True})
_ids = itertools.count()


def ctx_for(tenant: str = "acme", *, refused: str | None = None) -> RequestContext:
    n = next(_ids)
    body = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "add", "arguments": {"a": n}}}
    ctx = RequestContext(
        request_id=f"req-{n}",
        snapshot=None,  # type: ignore[arg-type]
        server_name="example",
        server=SERVER,
        client_ip="127.0.0.1",
        transport="streamable-http",
        http_method="POST",
        principal=Principal(tenant, f"key:{tenant}", key_id=tenant),
        http_status=401 if refused else 200,
    )
    ctx.message = parse_message(orjson.dumps(body))
    ctx.refused_stage = refused
    return ctx


def pipeline(dsn: str, spool: Path, **kw: Any) -> tuple[AuditPipeline, AuditMetrics]:
    settings = AuditSettings.model_validate(
        {"log_records": False, "flush_interval": 0.02, "batch_size": 200, "reconnect_interval": 0.1, **kw}
    )
    metrics = AuditMetrics(CollectorRegistry())
    sink = PostgresSink(dsn, connect_timeout=1.0, command_timeout=5.0)
    return AuditPipeline(settings, metrics, sink, spool), metrics


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def test_records_reach_postgres_and_verify_catches_edits_and_deletions(postgres_dsn: str, tmp_path: Path) -> None:
    async with temp_database(postgres_dsn) as dsn:
        pipe, metrics = pipeline(dsn, tmp_path / "spool.jsonl")
        await pipe.start()
        for i in range(300):
            pipe.observe(ctx_for("acme" if i % 2 else "globex", refused="authn" if i % 10 == 0 else None))
        await pipe.stop()
        rows = await fetch(dsn, "SELECT count(*) AS n, count(DISTINCT request_id) AS d FROM audit_records")
        assert rows[0]["n"] == rows[0]["d"] == 300
        assert metrics.written.labels("postgres")._value.get() == 300
        refused = await fetch(dsn, "SELECT stage, decision, risk FROM audit_records WHERE stage IS NOT NULL")
        assert len(refused) == 30 and {(r["stage"], r["decision"], r["risk"]) for r in refused} == {
            ("authn", "refused", "high")
        }
        args = await fetch(dsn, "SELECT arguments FROM audit_records WHERE request_id = 'req-1' OR true LIMIT 1")
        assert set(orjson.loads(args[0]["arguments"])) == {"a"}

        ok = cli("audit", "verify", "--dsn", dsn)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "300 record(s) from 1 writer(s): ok" in ok.stdout

        conn = await asyncpg.connect(dsn)
        try:
            original = await conn.fetchval("SELECT tenant FROM audit_records WHERE seq = 50")
            await conn.execute("UPDATE audit_records SET tenant = 'evil' WHERE seq = 50")
            edited = cli(
                "audit", "verify", "--dsn", dsn
            )  # the CLI once for its exit code, then the same code in-process
            assert edited.returncode == 1 and "seq 50" in edited.stdout and "altered" in edited.stdout
            await conn.execute("UPDATE audit_records SET tenant = $1 WHERE seq = 50", original)
            assert (await verify_postgres(dsn)).ok  # restoring the value restores the hash
            await conn.execute("DELETE FROM audit_records WHERE seq = 120")
            assert any("seq 121" in p and "missing" in p for p in (await verify_postgres(dsn)).problems)
            await conn.execute("DELETE FROM audit_records WHERE seq = 300")
            assert any("end of the chain" in p for p in (await verify_postgres(dsn)).problems)
            # reordering: swap two records' positions in the chain
            await conn.execute(
                "UPDATE audit_records SET seq = CASE seq WHEN 10 THEN 11 ELSE 10 END WHERE seq IN (10, 11)"
            )
            assert any("seq 10" in p for p in (await verify_postgres(dsn)).problems)
            await conn.execute("DELETE FROM audit_chain_heads")
            assert any("no chain head" in p for p in (await verify_postgres(dsn)).problems)
        finally:
            await conn.close()


async def test_replayed_batches_are_idempotent(postgres_dsn: str, tmp_path: Path) -> None:
    async with temp_database(postgres_dsn) as dsn:
        pipe, _ = pipeline(dsn, tmp_path / "spool.jsonl")
        events = [ctx_for() for _ in range(50)]
        # seal records the way the writer does, then send the same batch three times (replays after failures)
        from gateway.audit.record import capture

        records = await pipe._seal([capture(c) for c in events])
        sink = PostgresSink(dsn)
        try:
            for _ in range(3):
                await sink.write(records)
            await sink.write(records[10:20])
        finally:
            await sink.close()
        rows = await fetch(dsn, "SELECT count(*) AS n FROM audit_records")
        assert rows[0]["n"] == 50
        heads = await fetch(dsn, "SELECT last_seq FROM audit_chain_heads")
        assert [r["last_seq"] for r in heads] == [50]


async def test_postgres_outage_during_load_loses_and_duplicates_nothing(
    private_postgres: PostgresInstance, tmp_path: Path
) -> None:
    async with temp_database(private_postgres.dsn) as dsn:
        spool = tmp_path / "spool.jsonl"
        pipe, metrics = pipeline(dsn, spool)
        await pipe.start()
        sent: list[str] = []
        stop_load = asyncio.Event()

        async def load() -> None:
            # steady load from the "request path": synchronous observe() calls, never awaiting the audit
            while not stop_load.is_set():
                for _ in range(20):
                    ctx = ctx_for()
                    pipe.observe(ctx)
                    sent.append(ctx.request_id)
                await asyncio.sleep(0.005)

        loader = asyncio.create_task(load())
        await _until(lambda: metrics.written.labels("postgres")._value.get() >= 300)
        await asyncio.to_thread(private_postgres.stop)
        await _until(lambda: metrics.spooled._value.get() >= 500)
        assert metrics.spool_bytes.collect()[0].samples[0].value > 0
        await asyncio.to_thread(private_postgres.start)
        await _until(lambda: pipe.sink_up and metrics.replayed._value.get() >= 500, timeout=30)
        await asyncio.sleep(0.2)
        stop_load.set()
        await loader
        await pipe.stop()

        assert metrics.dropped.labels("queue_full")._value.get() == 0
        assert metrics.dropped.labels("spool_failed")._value.get() == 0
        rows = await fetch(dsn, "SELECT request_id FROM audit_records")
        got = [r["request_id"] for r in rows]
        assert len(got) == len(sent) and set(got) == set(sent)  # exactly one row per request
        assert os.listdir(tmp_path) == []  # spool replayed and removed, lock released
        ok = cli("audit", "verify", "--dsn", dsn)
        assert ok.returncode == 0, ok.stdout + ok.stderr


async def _until(cond: Any, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.02)


async def test_a_value_postgres_refuses_is_parked_and_the_rest_still_lands(postgres_dsn: str, tmp_path: Path) -> None:
    from gateway.audit.record import capture

    async with temp_database(postgres_dsn) as dsn:
        pipe, metrics = pipeline(dsn, tmp_path / "spool.jsonl", batch_size=50, flush_interval=5.0)
        await pipe.start()
        for i in range(60):
            if i == 33:
                bad = capture(ctx_for())
                bad.http_status = 2**40  # does not fit the integer column
                pipe.enqueue(bad)
            else:
                pipe.observe(ctx_for())
        await pipe.stop()
        assert (await fetch(dsn, "SELECT count(*) AS n FROM audit_records"))[0]["n"] == 59
        assert metrics.rejected._value.get() == 1 and metrics.spooled._value.get() == 0
        parked = (tmp_path / "spool.rejected.jsonl").read_bytes().splitlines()
        assert len(parked) == 1 and orjson.loads(parked[0])["http_status"] == 2**40
        # the chain shows where the parked record belongs
        out = cli("audit", "verify", "--dsn", dsn)
        assert out.returncode == 1 and "seq 35" in out.stdout and "1 record(s) missing" in out.stdout
