"""Trace ids in PostgreSQL audit rows (migration 006): a traced request's record lands with its `trace_id` and
`span_id`, an untraced one with NULLs, and one writer's chain mixing both verifies (NULL is read back as absent, so
records written before tracing was turned on, or before the migration, hash as they always did)."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.audit.verify import verify_postgres
from gateway.tracing.spans import Tracing
from tests.integration.test_audit_postgres import ctx_for, fetch, pipeline
from tests.integration.test_db_migrations import temp_database

pytestmark = pytest.mark.integration


async def test_trace_ids_reach_postgres_and_mixed_chains_verify(postgres_dsn: str, tmp_path: Path) -> None:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    tracing = Tracing(provider.get_tracer("test"))
    async with temp_database(postgres_dsn) as dsn:
        pipe, _ = pipeline(dsn, tmp_path / "spool.jsonl")
        await pipe.start()
        traced: dict[str, tuple[str, str]] = {}
        for i in range(40):
            ctx = ctx_for()
            if i % 2:
                trace = tracing.begin(ctx)
                traced[ctx.request_id] = (trace.trace_id, trace.span_id)
                tracing.observe(ctx)
            pipe.observe(ctx)
        await pipe.stop()
        rows = await fetch(dsn, "SELECT request_id, trace_id, span_id FROM audit_records")
        assert len(rows) == 40
        for r in rows:
            assert (r["trace_id"], r["span_id"]) == traced.get(r["request_id"], (None, None))
        one = next(iter(traced.values()))[0]
        found = await fetch(dsn, "SELECT count(*) AS n FROM audit_records WHERE trace_id = $1", one)
        assert found[0]["n"] == 1
        report = await verify_postgres(dsn)
        assert report.ok and report.records == 40, report.problems
