"""Tracing: W3C context parsing and propagation, the span tree of one request (server span, stage spans, one client
span per upstream attempt), sampling, attributes that never carry arguments, the ids in audit records and the
`tracing:` settings. The SDK is real (its in-memory exporter stands in for the collector); filters and the upstream
are fakes, as in test_chain.py."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
import yaml
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from gateway.audit.hashchain import HashChain, record_hash
from gateway.audit.postgres import copy_row, to_row
from gateway.audit.record import COLUMNS, FIELDS, RiskRules, build_record, capture, hash_session
from gateway.audit.sanitize import SanitizeLimits
from gateway.audit.verify import record_from_row
from gateway.auth.principal import Principal
from gateway.chain import STAGES, Chain, Filter
from gateway.context import RequestContext, UpstreamOutcome
from gateway.errors import Forbidden, GatewayError, UpstreamUnavailable
from gateway.jsonrpc import parse_message
from gateway.policy.model import PolicySet
from gateway.policy.snapshot import Snapshot
from gateway.settings import AuditSettings, Settings, load_settings
from gateway.tracing.factory import build_tracing
from gateway.tracing.propagation import (
    TRACEPARENT_MAX,
    TRACESTATE_MAX,
    extract,
    inject,
    parse_traceparent,
    parse_tracestate,
)
from gateway.tracing.provider import RepeatFilter
from gateway.tracing.settings import TracingSettings, problems
from gateway.tracing.spans import TRACED_STAGES, Tracing, session_hash

pytestmark = pytest.mark.unit

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
VALID = f"00-{TRACE}-{PARENT}-01"
UPSTREAM = "http://user:pw@10.0.0.7:9001/mcp?token=abc"
SECRET_ARG = "arg-value-never-in-a-span"


# ------------------------------------------------------------------ propagation


def test_valid_traceparent_parses() -> None:
    assert parse_traceparent(VALID) == (int(TRACE, 16), int(PARENT, 16), 1)
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-00") == (int(TRACE, 16), int(PARENT, 16), 0)
    # a later version may carry more fields after a dash: its first four are read
    assert parse_traceparent(f"cc-{TRACE}-{PARENT}-01-what-the-future-holds") == (int(TRACE, 16), int(PARENT, 16), 1)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00",
        f"00-{TRACE.upper()}-{PARENT}-01",  # upper-case hex is not the W3C form
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-1",
        f"00_{TRACE}_{PARENT}_01",
        f" 00-{TRACE}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-0g",
        f"cc-{TRACE}-{PARENT}-01x",  # a later version's extra fields start with a dash
        f"00-{TRACE}-{PARENT}-01\r\nX-Injected: 1",
        VALID + "-" + "a" * TRACEPARENT_MAX,  # oversized: not even looked at
        "0" * 1_000_000,
    ],
)
def test_malformed_traceparent_is_ignored(value: str) -> None:
    assert parse_traceparent(value) is None
    assert extract(CIMultiDictProxy(CIMultiDict(traceparent=value))) is None


def test_traceparent_that_is_not_text_is_ignored() -> None:
    assert parse_traceparent(None) is None
    assert parse_traceparent(b"00-" + TRACE.encode()) is None


def test_two_traceparent_headers_are_invalid() -> None:
    headers = CIMultiDict([("traceparent", VALID), ("traceparent", VALID)])
    assert extract(CIMultiDictProxy(headers)) is None


def test_extract_keeps_sampled_flag_and_valid_tracestate() -> None:
    headers = CIMultiDict(
        [("traceparent", VALID), ("tracestate", "rojo=00f067aa0ba902b7"), ("tracestate", "congo=t61")]
    )
    ctx = extract(CIMultiDictProxy(headers))
    assert ctx is not None and ctx.is_remote and ctx.trace_flags.sampled
    assert ctx.trace_id == int(TRACE, 16) and ctx.span_id == int(PARENT, 16)
    assert ctx.trace_state.to_header() == "rojo=00f067aa0ba902b7,congo=t61"
    # unknown flag bits are not passed on
    odd = extract(CIMultiDictProxy(CIMultiDict(traceparent=f"00-{TRACE}-{PARENT}-fe")))
    assert odd is not None and int(odd.trace_flags) == 0


@pytest.mark.parametrize(
    "value",
    [
        "Rojo=1",  # keys are lower case
        "rojo=1,rojo=2",  # duplicate keys
        "rojo",  # no value
        "rojo=a=b",  # '=' is not allowed in a value
        "rojo=1 ,congo=\x7f",
        ",".join(f"k{i}=v" for i in range(33)),  # more than 32 members
        "k=" + "v" * (TRACESTATE_MAX + 1),  # longer than we propagate
        "k=" + "v" * 257,  # a value is at most 256 characters
    ],
)
def test_invalid_tracestate_is_dropped_whole(value: str) -> None:
    assert parse_tracestate([value]) is None
    ctx = extract(CIMultiDictProxy(CIMultiDict([("traceparent", VALID), ("tracestate", value)])))
    assert ctx is not None and not ctx.trace_state


def test_tracestate_empty_members_and_whitespace_are_allowed() -> None:
    state = parse_tracestate(["rojo=1 , ,congo=2", "  "])
    assert state is not None and list(state.items()) == [("rojo", "1"), ("congo", "2")]
    assert parse_tracestate([]) is None
    assert parse_tracestate(["tenant@vendor=x"]) is not None


@given(st.text(max_size=300))
def test_parsers_never_raise(text: str) -> None:
    parse_traceparent(text)
    parse_tracestate([text])
    extract(CIMultiDictProxy(CIMultiDict([("traceparent", text), ("tracestate", text)])))


def test_inject_replaces_what_the_client_sent() -> None:
    remote = extract(CIMultiDictProxy(CIMultiDict([("traceparent", VALID), ("tracestate", "rojo=1")])))
    assert remote is not None
    headers = CIMultiDict([("traceparent", "garbage"), ("traceparent", "more"), ("tracestate", "x=1"), ("a", "b")])
    inject(headers, remote)
    assert headers.getall("traceparent") == [VALID]
    assert headers.getall("tracestate") == ["rojo=1"]
    stateless = extract(CIMultiDictProxy(CIMultiDict(traceparent=VALID)))
    assert stateless is not None
    inject(headers, stateless)
    assert "tracestate" not in headers and headers["a"] == "b"


# ------------------------------------------------------------------ spans of one request


def snapshot() -> Snapshot:
    return Snapshot.build(PolicySet(), "test", Path("."), 0.0)


def context(headers: dict[str, str] | None = None, body: bytes | None = None) -> RequestContext:
    ctx = RequestContext(
        request_id="rid-1",
        snapshot=snapshot(),
        server_name="example",
        server=None,
        client_ip="203.0.113.9",
        transport="streamable-http",
        http_method="POST",
        headers=CIMultiDictProxy(CIMultiDict(headers or {})),
        session_id="session-abc",
        protocol_version="2025-06-18",
    )
    if body is not None:
        ctx.message = parse_message(body, "2025-06-18")
    return ctx


TOOL_CALL = orjson.dumps(
    {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "add", "arguments": {"a": SECRET_ARG}}}
)


@dataclass
class FakeStage:
    stage: str
    refuse: GatewayError | None = None

    async def __call__(self, ctx: RequestContext) -> None:
        if self.stage == "authn":
            ctx.principal = Principal(tenant="acme", subject="k1", key_id="k1")
        if self.refuse is not None:
            raise self.refuse


class Traced:
    def __init__(self, ratio: float = 1.0) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)), shutdown_on_exit=False)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracing = Tracing(self.provider.get_tracer("test"))

    def chain(self, refuse_at: str | None = None) -> Chain:
        filters: tuple[Filter, ...] = tuple(
            FakeStage(s, Forbidden("no", reason="tool_denied") if s == refuse_at else None) for s in STAGES
        )
        return Chain(snapshot(), filters, (self.tracing,), self.tracing)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


def upstream_forward(outcomes: list[UpstreamOutcome], sent: list[CIMultiDict[str]]) -> Any:
    """A forward step making one attempt per outcome, like the retrying forwarder: each gets its own headers."""

    async def forward(ctx: RequestContext) -> str:
        for o in outcomes:
            headers: CIMultiDict[str] = CIMultiDict([("traceparent", "client-garbage"), ("tracestate", "a=b")])
            assert ctx.trace is not None
            ctx.trace.attempt(ctx, headers, o.upstream, "POST")
            sent.append(headers)
            ctx.report_outcome(o)
        ctx.http_status = 200
        if outcomes:
            ctx.upstream_url = outcomes[-1].upstream
        return "answered"

    return forward


def by_name(spans: list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


async def test_span_tree_continues_the_client_trace() -> None:
    t = Traced()
    ctx = context({"traceparent": VALID, "tracestate": "rojo=1"}, TOOL_CALL)
    sent: list[CIMultiDict[str]] = []
    outcomes = [UpstreamOutcome(UPSTREAM, None, "connect", 0.01), UpstreamOutcome(UPSTREAM, 200, None, 0.02)]
    assert await t.chain().run(ctx, upstream_forward(outcomes, sent)) == "answered"
    spans = t.spans()
    names = by_name(spans)
    server = names["tools/call add"][0]
    assert server.kind is SpanKind.SERVER
    assert server.context.trace_id == int(TRACE, 16)
    assert server.parent is not None and server.parent.span_id == int(PARENT, 16) and server.parent.is_remote
    # a child per stage that waits on something, none for client_guard
    stage_spans = [s for s in spans if s.kind is SpanKind.INTERNAL]
    assert sorted(s.attributes["mcp_gateway.stage"] for s in stage_spans) == sorted(TRACED_STAGES)
    assert "gateway client_guard" not in names
    for s in stage_spans:
        assert s.parent is not None and s.parent.span_id == server.context.span_id
    # one client span per attempt, the retry marked as a resend
    attempts = sorted((s for s in spans if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    assert len(attempts) == 2
    first, second = attempts
    assert first.attributes["error.type"] == "connect" and first.status.status_code is StatusCode.ERROR
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["http.response.status_code"] == 200
    for a in attempts:
        assert a.parent is not None and a.parent.span_id == server.context.span_id
        assert a.attributes["server.address"] == "10.0.0.7" and a.attributes["server.port"] == 9001
        assert a.attributes["url.full"] == "http://[REDACTED]@10.0.0.7:9001/mcp?[REDACTED]"
    # each attempt's headers name that attempt's span as parent; the client's values are gone, its valid
    # tracestate goes on
    for headers, a in zip(sent, attempts, strict=True):
        assert headers.getall("traceparent") == [f"00-{TRACE}-{a.context.span_id:016x}-01"]
        assert headers.getall("tracestate") == ["rojo=1"]
    # the server span's attributes (semantic conventions; never the arguments, never the session id)
    attrs = dict(server.attributes or {})
    assert attrs["mcp.method.name"] == "tools/call"
    assert attrs["gen_ai.tool.name"] == "add"
    assert attrs["gen_ai.operation.name"] == "execute_tool"
    assert attrs["mcp.session.id"] == hash_session("session-abc") != "session-abc"
    assert attrs["mcp.protocol.version"] == "2025-06-18"
    assert attrs["http.request.method"] == "POST" and attrs["http.response.status_code"] == 200
    assert attrs["mcp_gateway.tenant"] == "acme" and attrs["mcp_gateway.server"] == "example"
    assert attrs["client.address"] == "203.0.113.9"
    assert attrs["mcp_gateway.upstream"] == "http://[REDACTED]@10.0.0.7:9001/mcp?[REDACTED]"
    assert server.status.status_code is StatusCode.UNSET
    everything = orjson.dumps([dict(s.attributes or {}) for s in spans], option=orjson.OPT_NON_STR_KEYS)
    assert SECRET_ARG.encode() not in everything and b"session-abc" not in everything and b"pw" not in everything
    # the ids the audit record and the log lines carry are the server span's
    assert ctx.trace is not None
    assert ctx.trace.trace_id == TRACE and ctx.trace.span_id == f"{server.context.span_id:016x}"


async def test_refusal_marks_the_stage_and_the_server_span() -> None:
    t = Traced()
    ctx = context({"traceparent": VALID}, TOOL_CALL)
    with pytest.raises(Forbidden):
        await t.chain(refuse_at="authz").run(ctx, upstream_forward([], []))
    names = by_name(t.spans())
    authz = names["gateway authz"][0]
    assert authz.status.status_code is StatusCode.ERROR and authz.attributes["error.type"] == "tool_denied"
    assert "gateway ratelimit" not in names and "POST" not in names  # nothing after the refusal
    # a refused call is named by its method alone: a tool name any caller may make up is not a span name
    server = names["tools/call"][0]
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes["mcp_gateway.refused.stage"] == "authz"
    assert server.attributes["error.type"] == "tool_denied"
    assert server.attributes["gen_ai.tool.name"] == "add"


async def test_hostile_traceparent_starts_a_new_trace() -> None:
    t = Traced()
    ctx = context({"traceparent": "00-" + "x" * 100_000, "tracestate": "evil=1"}, TOOL_CALL)
    sent: list[CIMultiDict[str]] = []
    await t.chain().run(ctx, upstream_forward([UpstreamOutcome(UPSTREAM, 200, None, 0.01)], sent))
    server = by_name(t.spans())["tools/call add"][0]
    assert server.parent is None and server.context.trace_id != int(TRACE, 16)
    (headers,) = sent
    (value,) = headers.getall("traceparent")
    assert parse_traceparent(value) is not None and "x" * 10 not in value
    assert "tracestate" not in headers  # a tracestate without a valid traceparent is not passed on


async def test_unsampled_request_has_no_spans_but_propagates_its_id() -> None:
    t = Traced(ratio=0.0)
    ctx = context({}, TOOL_CALL)
    sent: list[CIMultiDict[str]] = []
    await t.chain().run(ctx, upstream_forward([UpstreamOutcome(UPSTREAM, 200, None, 0.01)], sent))
    assert t.spans() == []
    assert ctx.trace is not None and not ctx.trace.recording
    # the upstream is told: this trace is not sampled, its parent is the gateway's (non-recorded) span
    assert sent[0]["traceparent"] == f"00-{ctx.trace.trace_id}-{ctx.trace.span_id}-00"


async def test_client_decision_not_to_sample_is_followed() -> None:
    t = Traced(ratio=1.0)
    ctx = context({"traceparent": f"00-{TRACE}-{PARENT}-00"}, TOOL_CALL)
    sent: list[CIMultiDict[str]] = []
    await t.chain().run(ctx, upstream_forward([UpstreamOutcome(UPSTREAM, 200, None, 0.01)], sent))
    assert t.spans() == []
    assert ctx.trace is not None and ctx.trace.trace_id == TRACE
    parsed = parse_traceparent(sent[0]["traceparent"])
    assert parsed is not None and parsed[0] == int(TRACE, 16) and parsed[2] == 0


async def test_request_refused_before_the_chain_gets_a_span_from_the_observer() -> None:
    t = Traced()
    chain = t.chain()
    ctx = context({"traceparent": VALID})
    ctx.http_status, ctx.refused_stage, ctx.refused_reason = 403, "route", "origin_not_allowed"
    chain.finish(ctx)  # what transports/common.refuse_early does
    (span,) = t.spans()
    assert span.name == "POST" and span.kind is SpanKind.SERVER
    assert span.parent is not None and span.parent.span_id == int(PARENT, 16)
    assert span.attributes["error.type"] == "origin_not_allowed"
    assert ctx.trace is not None and ctx.trace.span_id == f"{span.context.span_id:016x}"


async def test_stage_exception_other_than_a_refusal_is_recorded() -> None:
    t = Traced()

    class Boom:
        stage = "ratelimit"

        async def __call__(self, ctx: RequestContext) -> None:
            raise UpstreamUnavailable("store down", reason="store_down")

    filters: tuple[Filter, ...] = tuple(Boom() if s == "ratelimit" else FakeStage(s) for s in STAGES)
    chain = Chain(snapshot(), filters, (t.tracing,), t.tracing)
    with pytest.raises(UpstreamUnavailable):
        await chain.run(context({}, TOOL_CALL), upstream_forward([], []))
    span = by_name(t.spans())["gateway ratelimit"][0]
    assert span.attributes["error.type"] == "store_down"


async def test_tracing_off_leaves_everything_as_it_was() -> None:
    chain = Chain(snapshot(), tuple(FakeStage(s) for s in STAGES), ())
    ctx = context({"traceparent": VALID}, TOOL_CALL)
    sent: list[CIMultiDict[str]] = []

    async def forward(c: RequestContext) -> str:
        assert c.trace is None
        return "answered"

    assert await chain.run(ctx, forward) == "answered"
    assert ctx.trace is None and sent == []
    tracing, life = build_tracing(TracingSettings(), Path("."))
    assert tracing is None and life.name == "tracing"


def test_tracing_off_loads_no_sdk() -> None:
    """With `tracing.enabled: false` the gateway never imports the tracing SDK or its exporter (time and memory).
    (redis-py imports the SDK's metrics package by itself whenever it is installed, and leaves it unused.)"""
    code = (
        "import sys\n"
        "from gateway.compose import build_gateway\n"
        "from gateway.settings import Settings\n"
        "gw = build_gateway(Settings())\n"
        "assert gw.tracing is None\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter'))]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


async def test_build_tracing_on_and_stop_exports_nothing_left() -> None:
    settings = TracingSettings(enabled=True, endpoint="http://127.0.0.1:9/v1/traces", timeout_seconds=0.5)
    tracing, life = build_tracing(settings, Path("."))
    assert isinstance(tracing, Tracing)
    await life.start()
    await life.stop()


# ------------------------------------------------------------------ audit and log correlation


def test_session_hash_is_the_audit_records() -> None:
    for sid in ("abc", "x" * 1000):
        ctx = context()
        ctx.session_id = sid
        ev = capture(ctx)
        rec = build_record(ev, ev.ts_us, RiskRules(AuditSettings().risk), SanitizeLimits())
        assert session_hash(sid) == rec["session_hash"]


async def test_audit_record_carries_the_ids_only_when_traced() -> None:
    risk, limits = RiskRules(AuditSettings().risk), SanitizeLimits()
    t = Traced()
    traced = context({"traceparent": VALID}, TOOL_CALL)
    await t.chain().run(traced, upstream_forward([UpstreamOutcome(UPSTREAM, 200, None, 0.01)], []))
    plain = context({"traceparent": VALID}, TOOL_CALL)
    chain = HashChain()
    records = []
    for ctx in (plain, traced):
        ev = capture(ctx)
        records.append(chain.seal(build_record(ev, ev.ts_us, risk, limits)))
    untraced, with_ids = records
    assert "trace_id" not in untraced and "span_id" not in untraced
    assert traced.trace is not None
    assert with_ids["trace_id"] == TRACE and with_ids["span_id"] == traced.trace.span_id
    for rec in records:
        assert record_hash(rec) == rec["hash"]
        row = copy_row(rec)
        assert len(row) == len(COLUMNS) and row[: len(FIELDS)] == to_row(rec)
        # read back from PostgreSQL (NULL = absent), the record is the one that was hashed
        stored = dict(zip(COLUMNS, (rec.get(c) for c in COLUMNS), strict=True))
        assert record_hash(record_from_row(stored)) == rec["hash"]
    # a row read without the trace columns (a query that leaves them out) still verifies when it had none
    assert record_hash(record_from_row({f: untraced.get(f) for f in FIELDS})) == untraced["hash"]


async def test_log_lines_carry_the_ids_while_the_request_runs() -> None:
    t = Traced()
    seen: dict[str, Any] = {}

    class Peek:
        stage = "authz"

        async def __call__(self, ctx: RequestContext) -> None:
            seen.update(structlog.contextvars.get_contextvars())

    filters: tuple[Filter, ...] = tuple(Peek() if s == "authz" else FakeStage(s) for s in STAGES)
    ctx = context({"traceparent": VALID}, TOOL_CALL)
    await Chain(snapshot(), filters, (t.tracing,), t.tracing).run(ctx, upstream_forward([], []))
    assert ctx.trace is not None
    assert seen["trace_id"] == TRACE and seen["span_id"] == ctx.trace.span_id
    assert "trace_id" not in structlog.contextvars.get_contextvars()  # unbound when the request ended


# ------------------------------------------------------------------ settings and the SDK's log lines


def test_settings_refuse_inline_secrets_and_bad_endpoints() -> None:
    with pytest.raises(ValidationError):
        TracingSettings.model_validate({"headers": {"x-api-key": "inline-secret"}})
    with pytest.raises(ValidationError):
        TracingSettings.model_validate({"endpoint": "http://user:pw@collector:4318/v1/traces"})
    with pytest.raises(ValidationError):
        TracingSettings.model_validate({"endpoint": "collector:4318"})
    with pytest.raises(ValidationError):
        TracingSettings.model_validate({"sampler": {"ratio": 1.5}})
    with pytest.raises(ValidationError):
        TracingSettings.model_validate({"max_queue_size": 10, "max_export_batch_size": 20})
    ok = TracingSettings.model_validate(
        {"enabled": True, "headers": {"x-api-key": {"env": "MGW_TEST_UNSET_TRACING_KEY"}}, "sampler": {"ratio": 0.1}}
    )
    (problem,) = problems(ok, Path("."))
    assert "tracing.headers.x-api-key" in problem and "MGW_TEST_UNSET_TRACING_KEY" in problem
    assert problems(TracingSettings(), Path(".")) == []


def test_repeated_sdk_log_lines_are_held_back() -> None:
    flt = RepeatFilter(interval=3600)

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("opentelemetry.sdk", logging.WARNING, __file__, 1, msg, None, None)

    assert flt.filter(record("Queue full, dropping %s."))
    assert not any(flt.filter(record("Queue full, dropping %s.")) for _ in range(5))
    assert flt.filter(record("another message"))
    # once the interval has passed, the next line says how many were held back
    key = ("opentelemetry.sdk", "Queue full, dropping %s.")
    flt._last[key] = (flt._last[key][0] - 7200, flt._last[key][1])
    again = record("Queue full, dropping %s.")
    assert flt.filter(again) and "5 more like it" in str(again.msg)


def test_the_walkthroughs_config_and_the_shipped_config_load() -> None:
    """docs/operations.md section 9's `config.yaml` example and config.yaml's `tracing:` block are valid settings."""
    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "operations.md").read_text()
    block = doc.split("   # config.yaml\n", 1)[1].split("   ```", 1)[0]
    data = yaml.safe_load(textwrap.dedent(block))
    settings = Settings.model_validate(data)
    assert settings.tracing.enabled and settings.tracing.sampler.ratio == 0.1
    assert set(settings.tracing.headers) == {"x-api-key"}
    shipped = load_settings(root / "config.yaml", env={})
    assert shipped.tracing.enabled is False and shipped.tracing.protocol == "http/protobuf"


async def test_undecodable_client_bytes_cannot_break_an_export_batch() -> None:
    """Header bytes that are not UTF-8 arrive as surrogate escapes; protobuf refuses those, and one such span would
    fail the export of its whole batch (everyone's spans). Every attribute is valid UTF-8 and the batch encodes."""
    t = Traced()
    bad = b"\xff\xfe".decode("utf-8", "surrogateescape")
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t"}})
    ctx = context({"Host": f"h{bad}.example:8080", "traceparent": VALID}, body)
    ctx.server_name = f"route{bad}"
    ctx.protocol_version = f"2025{bad}"
    assert ctx.message is not None
    ctx.message.envelopes[0].name = f"tool{bad}"
    await t.chain().run(ctx, upstream_forward([UpstreamOutcome(f"http://up{bad}:1/mcp", 200, None, 0.01)], []))
    spans = t.spans()
    encode_spans(spans).SerializeToString()  # raises on a surrogate
    for s in spans:
        for v in (s.attributes or {}).values():
            if isinstance(v, str):
                v.encode("utf-8")
