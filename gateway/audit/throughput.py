"""Audit throughput measurement for `make bench` and `mcp-gateway audit bench`.

Drives the real pipeline (observe -> writer -> sink) with synthetic finished requests and reports how many
records per second reach the sink, and what one `observe()` costs on the request path. With a PostgreSQL server
DSN it works in a database of its own (`mgw_bench_<random>`, migrated, dropped afterwards), never in a live one.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from gateway.audit.metrics import AuditMetrics
from gateway.audit.pipeline import AuditPipeline
from gateway.audit.postgres import PostgresSink
from gateway.audit.sinks import AuditSink, JsonlFileSink
from gateway.auth.principal import Principal
from gateway.context import RequestContext
from gateway.db.scratch import scratch_database
from gateway.jsonrpc import parse_message
from gateway.policy.servers import ServerPolicy
from gateway.settings import AuditSettings


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    sink: str
    records: int
    seconds: float
    observe_ns: float  # mean cost of one observe() call (capture + enqueue)

    @property
    def rows_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "sink": self.sink,
            "records": self.records,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "observe_ns": round(self.observe_ns, 1),
        }


def _context(n: int) -> RequestContext:
    server = ServerPolicy.model_validate({"upstreams": [{"url": "http://127.0.0.1:1/mcp"}], "audit_arguments": True})
    body = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "add", "arguments": {"a": n}}}
    ctx = RequestContext(
        request_id=f"bench-{n}",
        snapshot=None,  # type: ignore[arg-type]  # observe() never reads the snapshot
        server_name="bench",
        server=server,
        client_ip="127.0.0.1",
        transport="streamable-http",
        http_method="POST",
        principal=Principal("bench", "key:bench", key_id="bench"),
        upstream_url="http://127.0.0.1:1/mcp",
        http_status=200,
        upstream_status=200,
        upstream_latency=0.001,
        bytes_in=120,
        bytes_out=300,
    )
    ctx.message = parse_message(orjson.dumps(body))
    return ctx


async def measure(
    sink: AuditSink, records: int, *, batch_size: int = 500, log_records: bool = False
) -> ThroughputResult:
    settings = AuditSettings(batch_size=batch_size, queue_size=max(records, 1), log_records=log_records)
    metrics = AuditMetrics(CollectorRegistry())
    with tempfile.TemporaryDirectory(prefix="mgw-bench-spool-") as spool_dir:
        return await _drive(
            AuditPipeline(settings, metrics, sink, Path(spool_dir) / "spool.jsonl"), metrics, sink, records, batch_size
        )


async def _drive(
    pipe: AuditPipeline, metrics: AuditMetrics, sink: AuditSink, records: int, batch_size: int
) -> ThroughputResult:
    await pipe.start()
    written = metrics.written.labels(sink.name)
    ctx = _context(0)
    t0 = time.perf_counter()
    observe_total = 0.0
    for i in range(records):
        ctx.request_id = f"bench-{i}"
        s = time.perf_counter_ns()
        pipe.observe(ctx)
        observe_total += time.perf_counter_ns() - s
        if i % batch_size == 0:
            await asyncio.sleep(0)  # let the writer run, as it would between requests
    while written._value.get() < records:
        pipe.wake()  # the last partial batch would otherwise wait out flush_interval, idle time counted as work
        await asyncio.sleep(0.005)
    seconds = time.perf_counter() - t0
    await pipe.stop()
    return ThroughputResult(sink.name, records, seconds, observe_total / max(records, 1))


async def measure_postgres(server_dsn: str, records: int, *, batch_size: int = 500) -> ThroughputResult:
    """In a fresh database of its own on the server behind `server_dsn` (needs CREATEDB)."""
    async with scratch_database(server_dsn, prefix="mgw_bench_") as dsn:
        return await measure(PostgresSink(dsn), records, batch_size=batch_size)


async def measure_file(records: int, *, batch_size: int = 500) -> ThroughputResult:
    with tempfile.TemporaryDirectory(prefix="mgw-bench-audit-") as tmp:
        return await measure(JsonlFileSink(Path(tmp) / "audit.jsonl"), records, batch_size=batch_size)
