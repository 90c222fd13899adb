"""The audit observer on the request path (synchronous, never blocking) and the writer's sink/spool logic.

Fakes are limited to the sink (pure pipeline logic); the real sinks are tested in tests/integration.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.audit import pipeline as pipeline_module
from gateway.audit.hashchain import verify_records
from gateway.audit.metrics import AuditMetrics
from gateway.audit.pipeline import AuditPipeline
from gateway.audit.record import AuditEvent, RiskRules, build_record, capture, decision_of
from gateway.audit.sanitize import SanitizeLimits
from gateway.audit.sinks import JsonlFileSink
from gateway.audit.spool import AuditSpool
from gateway.auth.principal import Principal
from gateway.context import RequestContext, ShadowDecision
from gateway.jsonrpc import parse_message
from gateway.policy.servers import ServerPolicy
from gateway.settings import AuditRiskRules, AuditSettings

pytestmark = pytest.mark.unit

BEARER = "mgw_k1_supersecretvalue1234567890"


def make_ctx(body: dict[str, Any] | None = None, *, audit_arguments: bool = True, **kw: Any) -> RequestContext:
    server = ServerPolicy.model_validate({"upstreams": [{"url": "http://u:1/mcp"}], "audit_arguments": audit_arguments})
    ctx = RequestContext(
        request_id="req-1",
        snapshot=None,  # type: ignore[arg-type]
        server_name="example",
        server=server,
        client_ip="10.0.0.7",
        transport="streamable-http",
        http_method="POST",
        headers={"Authorization": f"Bearer {BEARER}"},
        session_id="sess-abc",
        upstream_url="http://user:pw@10.1.1.1:9000/mcp?token=abc",
    )
    if body is not None:
        ctx.message = parse_message(orjson.dumps(body))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


CALL = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "tools/call",
    "params": {"name": "add", "arguments": {"a": 1, "password": "hunter2", "note": f"Bearer {BEARER}"}},
}


def settings(**kw: Any) -> AuditSettings:
    return AuditSettings.model_validate({"log_records": False, "flush_interval": 0.01, **kw})


def test_record_fields_from_context() -> None:
    ctx = make_ctx(CALL, principal=Principal("acme", "key:k1", key_id="k1"), http_status=200, upstream_status=200)
    ctx.upstream_latency = 0.0123
    ctx.bytes_in, ctx.bytes_out = 120, 345
    ev = capture(ctx)
    rec = build_record(ev, ev.ts_us, RiskRules(AuditRiskRules()), SanitizeLimits())
    assert rec["tenant"] == "acme" and rec["principal"] == "key:k1" and rec["key_id"] == "k1"
    assert rec["rpc_method"] == "tools/call" and rec["tool"] == "add" and rec["rpc_id"] == "7"
    assert rec["decision"] == "allowed" and rec["stage"] is None and rec["risk"] == "medium"  # a write
    # credentials and query replaced by the marker (gateway/redact.py display_url), never shown
    assert rec["upstream"] == "http://[REDACTED]@10.1.1.1:9000/mcp?[REDACTED]"
    assert "pw" not in rec["upstream"] and "abc" not in rec["upstream"]
    assert rec["session_hash"] and "sess-abc" not in orjson.dumps(rec).decode()
    assert rec["upstream_latency_ms"] == 12.3 and rec["bytes_in"] == 120 and rec["bytes_out"] == 345
    assert rec["arguments"] == {"a": 1, "password": "[REDACTED]", "note": "[REDACTED:bearer]"}
    assert BEARER not in orjson.dumps(rec).decode()


def test_arguments_only_where_policy_opts_in() -> None:
    ev = capture(make_ctx(CALL, audit_arguments=False))
    assert ev.arguments is None
    assert build_record(ev, ev.ts_us, RiskRules(AuditRiskRules()), SanitizeLimits())["arguments"] is None


@pytest.mark.parametrize(
    ("stage", "status", "decision", "risk"),
    [
        (None, 200, "allowed", "low"),
        ("authn", 401, "refused", "high"),
        ("client_guard", 429, "refused", "high"),
        ("ratelimit", 429, "refused", "medium"),
        ("breaker", 503, "refused", "medium"),
        ("forward", 502, "error", "medium"),
        (None, 499, "cancelled", "low"),
    ],
)
def test_decision_and_risk(stage: str | None, status: int, decision: str, risk: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    ev = capture(make_ctx(body, refused_stage=stage, refused_reason="x" if stage else None, http_status=status))
    assert decision_of(ev) == decision
    assert RiskRules(AuditRiskRules()).level(ev, decision) == risk


def test_configurable_risk_rules() -> None:
    rules = RiskRules(AuditRiskRules(tools={"delete_*": "critical"}, methods={"resources/read": "high"}))
    ev = AuditEvent(0, 0, "r", "s", "t", "POST", "ip", rpc_method="tools/call", tool="delete_user")
    assert rules.level(ev, "allowed") == "critical"
    ev2 = AuditEvent(0, 0, "r", "s", "t", "POST", "ip", rpc_method="resources/read")
    assert rules.level(ev2, "allowed") == "high"
    admin = AuditEvent(0, 0, "r", "_admin", "admin", "GET", "ip", admin=True)
    assert rules.level(admin, "allowed") == "high"


def test_shadow_and_notes_recorded() -> None:
    ctx = make_ctx(CALL, http_status=200)
    ctx.shadow.append(ShadowDecision("ratelimit", "tenant_quota"))
    ctx.notes["limit"] = {"tier": "user", "token": "abc"}
    ev = capture(ctx)
    rec = build_record(ev, ev.ts_us, RiskRules(AuditRiskRules()), SanitizeLimits())
    assert rec["shadow"] == [{"stage": "ratelimit", "reason": "tenant_quota"}]
    assert rec["notes"] == {"limit": {"tier": "user", "token": "[REDACTED]"}}


class FlakySink:
    """A sink that fails while `down` is set; remembers every record id it accepted (idempotently)."""

    name = "fake"

    def __init__(self) -> None:
        self.down = False
        self.rows: dict[str, dict[str, Any]] = {}
        self.writes = 0

    async def connect(self) -> None:
        if self.down:
            raise ConnectionRefusedError("down")

    async def write(self, records: list[dict[str, Any]]) -> None:
        if self.down:
            raise ConnectionRefusedError("down")
        if any(r["request_id"] == "poison" for r in records):
            raise ValueError("the store refuses this record")
        self.writes += 1
        for r in records:
            self.rows.setdefault(r["id"], r)

    async def maintain(self) -> int:
        return 0

    def is_data_error(self, exc: BaseException) -> bool:
        return isinstance(exc, ValueError)

    async def close(self) -> None:
        return None


def test_observe_is_synchronous_and_never_blocks(tmp_path: Path) -> None:
    # no event loop is running here: observe() must not need one
    assert not inspect.iscoroutinefunction(AuditPipeline.observe)
    metrics = AuditMetrics(CollectorRegistry())

    async def build() -> AuditPipeline:
        return AuditPipeline(settings(queue_size=5), metrics, FlakySink(), tmp_path / "spool")

    pipe = asyncio.run(build())
    ctx = make_ctx(CALL)
    for _ in range(8):
        assert pipe.observe(ctx) is None  # type: ignore[func-returns-value]
    assert pipe.queue_depth == 5
    assert metrics.dropped_queue_full._value.get() == 3


async def test_sink_outage_spools_then_replays_exactly_once(tmp_path: Path) -> None:
    metrics = AuditMetrics(CollectorRegistry())
    sink = FlakySink()
    spool = tmp_path / "spool.jsonl"
    pipe = AuditPipeline(settings(batch_size=10, reconnect_interval=0.05), metrics, sink, spool)
    await pipe.start()
    ctx = make_ctx(CALL)
    for _ in range(25):
        pipe.observe(ctx)
    await _until(lambda: len(sink.rows) == 25)
    sink.down = True
    for _ in range(40):
        pipe.observe(ctx)
    await _until(lambda: metrics.spooled._value.get() == 40)
    assert metrics.spool_bytes.collect()[0].samples[0].value > 0 and len(sink.rows) == 25
    sink.down = False
    for _ in range(5):
        pipe.observe(ctx)
    await _until(lambda: len(sink.rows) == 70)
    await pipe.stop()
    assert sorted(os.listdir(tmp_path)) == []  # spool and replay files gone
    # the last 5 may also have gone to the spool (the sink is retried once per reconnect interval)
    assert metrics.replayed._value.get() == metrics.spooled._value.get() >= 40
    assert metrics.dropped_queue_full._value.get() == 0 and metrics.dropped_spool._value.get() == 0
    ordered = sorted(sink.rows.values(), key=lambda r: r["seq"])
    assert [r["seq"] for r in ordered] == list(range(1, 71))
    assert verify_records(ordered).ok


async def test_stop_flushes_to_spool_when_sink_is_down_and_next_run_replays(tmp_path: Path) -> None:
    metrics = AuditMetrics(CollectorRegistry())
    sink = FlakySink()
    sink.down = True
    spool = tmp_path / "spool.jsonl"
    pipe = AuditPipeline(settings(batch_size=7, flush_interval=5.0), metrics, sink, spool)
    await pipe.start()
    for _ in range(30):
        pipe.observe(make_ctx(CALL))
    await pipe.stop()
    # the stopped process's spool stays on disk (its lock released) for the next process to adopt
    left = [f for f in os.listdir(tmp_path) if not f.endswith(".lock")]
    assert len(left) == 1 and left[0].startswith("spool.jsonl.")
    assert len((tmp_path / left[0]).read_bytes().splitlines()) == 30
    sink.down = False
    pipe2 = AuditPipeline(settings(), AuditMetrics(CollectorRegistry()), sink, spool)
    await pipe2.start()
    await _until(lambda: len(sink.rows) == 30)
    await pipe2.stop()
    assert os.listdir(tmp_path) == []


async def test_file_sink_writes_verifiable_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    pipe = AuditPipeline(settings(), AuditMetrics(CollectorRegistry()), JsonlFileSink(path), tmp_path / "spool")
    await pipe.start()
    for i in range(12):
        pipe.observe(make_ctx(CALL, request_id=f"r{i}"))
    await pipe.stop()
    recs = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["request_id"] for r in recs] == [f"r{i}" for i in range(12)]
    assert verify_records(recs).ok


async def _until(cond: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.01)


async def test_spools_of_ended_processes_are_adopted_but_live_ones_are_not(tmp_path: Path) -> None:
    base = tmp_path / "spool.jsonl"
    live, dead, me = AuditSpool(base, "live"), AuditSpool(base, "dead"), AuditSpool(base, "me")
    live.open()
    dead.open()
    await live.append([{"id": "l1"}])
    await dead.append([{"id": "d1"}, {"id": "d2"}])
    base.write_bytes(b'{"id": "legacy"}\n')  # a spool at the bare path (older layout) is always adopted
    dead.close()  # ended with records left (PostgreSQL was down at shutdown)
    assert me.open() == 2
    got: list[str] = []

    async def write(records: list[dict[str, Any]]) -> None:
        got.extend(r["id"] for r in records)

    await me.replay(write, 10)
    assert sorted(got) == ["d1", "d2", "legacy"]
    assert live.pending() and (tmp_path / "spool.jsonl.live").exists()  # a running owner keeps its spool
    live.close()
    assert me.adopt_orphans() == 1
    await me.replay(write, 10)
    assert sorted(got) == ["d1", "d2", "l1", "legacy"]
    me.close()
    assert os.listdir(tmp_path) == []


def test_format_ts_matches_strftime_across_seconds() -> None:
    from datetime import timedelta

    from gateway.audit.record import EPOCH, format_ts

    for us in (0, 1, 999_999, 1_000_000, 1_764_115_199_999_999, 1_764_115_200_000_000, -1, 4_102_444_800_123_456):
        assert format_ts(us) == (EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_throughput_helper_drives_the_real_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from gateway.audit.throughput import measure_file

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = await measure_file(300, batch_size=50)
    assert result.records == 300 and result.seconds > 0 and result.observe_ns > 0
    assert set(result.as_dict()) == {"sink", "records", "seconds", "rows_per_second", "observe_ns"}
    # `mcp-gateway audit bench` is run by operators too: its scratch directories must not pile up in /tmp
    assert os.listdir(tmp_path) == []


async def test_a_record_the_sink_refuses_is_isolated_and_parked_not_blocking_the_rest(tmp_path: Path) -> None:
    metrics = AuditMetrics(CollectorRegistry())
    sink = FlakySink()
    pipe = AuditPipeline(settings(batch_size=64, flush_interval=5.0), metrics, sink, tmp_path / "spool.jsonl")
    await pipe.start()
    for i in range(40):
        pipe.observe(make_ctx(CALL, request_id="poison" if i == 17 else f"r{i}"))
    await pipe.stop()
    assert len(sink.rows) == 39 and "poison" not in {r["request_id"] for r in sink.rows.values()}
    rejected = [orjson.loads(line) for line in (tmp_path / "spool.rejected.jsonl").read_bytes().splitlines()]
    assert [r["request_id"] for r in rejected] == ["poison"]
    assert metrics.rejected._value.get() == 1 and metrics.spooled._value.get() == 0
    assert pipe.sink_up  # a bad record is not an outage


async def test_writer_survives_a_record_that_cannot_be_built(tmp_path: Path) -> None:
    metrics = AuditMetrics(CollectorRegistry())
    sink = FlakySink()
    pipe = AuditPipeline(settings(), metrics, sink, tmp_path / "spool.jsonl")
    await pipe.start()
    bad = capture(make_ctx(CALL))
    bad.client_ip = None  # type: ignore[assignment]  # a bug elsewhere hands us garbage
    pipe.enqueue(bad)
    pipe.observe(make_ctx(CALL, request_id="after"))
    await pipe.stop()
    assert [r["request_id"] for r in sink.rows.values()] == ["after"]
    assert metrics.dropped.labels("build_failed")._value.get() == 1


def test_capture_fills_every_field_in_order() -> None:
    # capture() builds the event positionally: every field must land where its name says, so each gets a
    # distinct value here and the result is compared field by field with a keyword-built event
    import dataclasses

    ctx = make_ctx(
        {"jsonrpc": "2.0", "id": "x-9", "method": "resources/read", "params": {"uri": "file:///a"}},
        principal=Principal("acme", "key:k1", key_id="k1", method="oauth"),
        refused_stage="ratelimit",
        refused_reason="tenant_quota",
        http_status=429,
        rpc_error_code=-32029,
        upstream_status=503,
        upstream_latency=0.25,
        bytes_in=11,
        bytes_out=22,
    )
    ctx.shadow.append(ShadowDecision("authz", "shadow_rule"))
    ctx.notes["limit"] = "tenant"
    ev = capture(ctx)
    expected = AuditEvent(
        ts_us=ev.ts_us,
        started_us=int(ctx.started_wall * 1_000_000),
        request_id="req-1",
        server="example",
        transport="streamable-http",
        http_method="POST",
        client_ip="10.0.0.7",
        tenant="acme",
        principal="key:k1",
        key_id="k1",
        auth_method="oauth",
        upstream="http://user:pw@10.1.1.1:9000/mcp?token=abc",
        session_id="sess-abc",
        rpc_method="resources/read",
        rpc_id="x-9",
        tool=None,
        resource_uri="file:///a",
        refused_stage="ratelimit",
        refused_reason="tenant_quota",
        http_status=429,
        rpc_error_code=-32029,
        upstream_status=503,
        latency_s=ev.latency_s,
        upstream_latency_s=0.25,
        bytes_in=11,
        bytes_out=22,
        shadow=(("authz", "shadow_rule"),),
        arguments={"uri": "file:///a"},
        notes={"limit": "tenant"},
        admin=False,
    )
    assert dataclasses.asdict(ev) == dataclasses.asdict(expected)
    assert ev.latency_s is not None and ev.latency_s >= 0 and ev.ts_us >= expected.started_us


def _sealed_records(n: int) -> list[dict[str, Any]]:
    from gateway.audit.hashchain import HashChain

    chain, rules = HashChain("w1"), RiskRules(AuditRiskRules())
    out = []
    for i in range(n):
        ctx = make_ctx(CALL, request_id=f"r{i}-é", principal=Principal("acme", "key:k1", key_id="k1"))
        ctx.notes["limit"] = {"tier": "user", "n": i, "f": 1.5}
        ev = capture(ctx)
        out.append(chain.seal(build_record(ev, ev.ts_us, rules, SanitizeLimits())))
    return out


def _log_lines(level: str, fmt: str, emit: Any) -> list[str]:
    """Lines printed with gateway.logging's configuration (into a buffer), restoring the previous one after."""
    import io
    import logging

    import structlog

    from gateway.logging import configure_logging

    saved, root = structlog.get_config(), logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    buf = io.StringIO()
    try:
        configure_logging(level, fmt)
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(buf))
        structlog.contextvars.bind_contextvars(worker=3)
        emit()
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.configure(**saved)
        root.handlers[:], root.level = handlers, root_level
    return buf.getvalue().splitlines()


def _no_timestamp(line: str) -> list[tuple[str, Any]]:
    obj = orjson.loads(line)
    assert isinstance(obj.pop("timestamp"), str)
    return list(obj.items())  # key order included


def test_batched_record_log_prints_what_structlog_prints() -> None:
    import structlog

    from gateway.audit.recordlog import RecordLog

    records = _sealed_records(5)

    def one_by_one() -> None:
        log = structlog.get_logger("gateway.audit")
        for rec in records:
            log.info("audit", **rec)

    def batched() -> None:
        rlog = RecordLog()
        assert rlog._batch_renderer(records) is not None  # the fast path is the one under test
        rlog.emit(records)

    slow, fast = _log_lines("info", "json", one_by_one), _log_lines("info", "json", batched)
    assert len(fast) == len(records) and [_no_timestamp(x) for x in fast] == [_no_timestamp(x) for x in slow]
    stamp = re.compile(r'"timestamp":"[^"]*"')
    assert [stamp.sub("", x) for x in fast] == [stamp.sub("", x) for x in slow]  # byte for byte otherwise
    assert [orjson.loads(x)["worker"] for x in fast] == [3] * len(records)
    # the level filter holds, and any other format goes through structlog unchanged
    assert _log_lines("warning", "json", batched) == []
    console = _log_lines("info", "console", lambda: RecordLog().emit(records))
    assert len(console) == len(records) and not console[0].startswith("{") and "r0-é" in console[0]


def test_file_sink_lines_are_the_same_when_reused_from_the_log(tmp_path: Path) -> None:
    from gateway.audit.files import EncodedBatch, encode_lines

    records = _sealed_records(3)
    plain = b"".join(orjson.dumps(r) + b"\n" for r in records)
    assert encode_lines(EncodedBatch(records, [orjson.dumps(r) for r in records])) == plain
    assert encode_lines(EncodedBatch(records, None)) == plain == encode_lines(records)
    assert encode_lines(EncodedBatch([], [])) == b""

    path = tmp_path / "audit.jsonl"

    async def run() -> None:
        pipe = AuditPipeline(
            settings(log_records=True), AuditMetrics(CollectorRegistry()), JsonlFileSink(path), tmp_path / "spool"
        )
        await pipe.start()
        for i in range(12):
            pipe.observe(make_ctx(CALL, request_id=f"r{i}"))
        await pipe.stop()

    logged = _log_lines("info", "json", lambda: asyncio.run(run()))
    audit_lines = [orjson.loads(x) for x in logged if '"event":"audit"' in x]
    recs = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["request_id"] for r in recs] == [f"r{i}" for i in range(12)] and verify_records(recs).ok
    assert [{k: v for k, v in x.items() if k in recs[0]} for x in audit_lines] == recs


async def test_a_partial_batch_waits_for_the_rest_within_the_flush_interval(tmp_path: Path) -> None:
    # under steady load the writer sends full batches instead of whatever arrived during the last write
    metrics = AuditMetrics(CollectorRegistry())
    sink = FlakySink()
    pipe = AuditPipeline(settings(batch_size=50, flush_interval=5.0), metrics, sink, tmp_path / "spool.jsonl")
    await pipe.start()
    for i in range(10):
        pipe.observe(make_ctx(CALL, request_id=f"r{i}"))
    await asyncio.sleep(0.1)
    assert sink.writes == 0 and pipe.queue_depth == 10
    for i in range(10, 50):
        pipe.observe(make_ctx(CALL, request_id=f"r{i}"))
    await _until(lambda: len(sink.rows) == 50)
    assert sink.writes == 1
    pipe.observe(make_ctx(CALL, request_id="last"))
    await pipe.stop()  # stop() flushes a partial batch at once
    assert len(sink.rows) == 51 and sink.writes == 2


async def test_writer_seals_a_large_batch_in_slices_and_keeps_the_chain_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import pacing

    monkeypatch.setattr(pacing, "SLICE_SECONDS", 0.0002)
    sink = FlakySink()
    pipe = AuditPipeline(
        settings(batch_size=400, flush_interval=5.0), AuditMetrics(CollectorRegistry()), sink, tmp_path / "s"
    )
    await pipe.start()
    for i in range(400):
        pipe.observe(make_ctx(CALL, request_id=f"r{i}"))
    progress: list[int] = []

    async def ticker() -> None:
        while len(sink.rows) < 400:
            progress.append(pipe.queue_depth)
            await asyncio.sleep(0)

    await asyncio.wait_for(ticker(), 10)
    await pipe.stop()
    # one batch (one sink write), sealed over many loop iterations with the loop free in between
    assert sink.writes == 1 and len(progress) > 3
    ordered = sorted(sink.rows.values(), key=lambda r: r["seq"])
    assert [r["request_id"] for r in ordered] == [f"r{i}" for i in range(400)]
    assert verify_records(ordered).ok


async def test_stop_that_gives_up_in_the_middle_of_a_batch_loses_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import pacing

    monkeypatch.setattr(pacing, "SLICE_SECONDS", 0.0)  # a slice per record
    stuck = asyncio.Event()
    real_next = pacing.Slice.next
    calls = 0

    async def next_slice(self: pacing.Slice) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            await stuck.wait()  # the writer hangs between two slices until stop() gives up on it
        await real_next(self)

    monkeypatch.setattr(pacing.Slice, "next", next_slice)
    sink = FlakySink()
    spool = tmp_path / "spool.jsonl"
    pipe = AuditPipeline(settings(batch_size=50, flush_interval=5.0), AuditMetrics(CollectorRegistry()), sink, spool)
    await pipe.start()
    for i in range(50):
        pipe.observe(make_ctx(CALL, request_id=f"r{i}"))
    await pipe.stop(timeout=0.2)
    # the sealed part and the rest of the batch were spooled (the writer was cancelled, the sink counts as down)
    assert not sink.rows
    left = [f for f in os.listdir(tmp_path) if not f.endswith(".lock")]
    recs = [orjson.loads(line) for name in left for line in (tmp_path / name).read_bytes().splitlines()]
    ordered = sorted(recs, key=lambda r: r["seq"])
    assert [r["seq"] for r in ordered] == list(range(1, 51))
    assert sorted(r["request_id"] for r in ordered) == sorted(f"r{i}" for i in range(50))
    assert verify_records(ordered).ok


def test_queue_age_is_the_oldest_waiting_record_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = AuditMetrics(CollectorRegistry())

    async def build() -> AuditPipeline:
        return AuditPipeline(settings(queue_size=5), metrics, FlakySink(), tmp_path / "spool")

    pipe = asyncio.run(build())  # not started: what is enqueued waits
    assert pipe.queue_age() == 0.0 and metrics.queue_age._child_samples()[0].value == 0.0
    now = 1_000_000.0
    # the module's clock only: everything else keeps the real one
    monkeypatch.setattr(pipeline_module, "time", SimpleNamespace(time=lambda: now, monotonic=time.monotonic))
    for finished in (now - 40.0, now - 5.0):
        ev = capture(make_ctx(CALL))
        ev.ts_us = int(finished * 1_000_000)
        pipe.enqueue(ev)
    assert pipe.queue_age() == pytest.approx(40.0)
    assert metrics.queue_age._child_samples()[0].value == pytest.approx(40.0)
