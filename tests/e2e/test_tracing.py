"""OpenTelemetry tracing through a real gateway process: the official SDK client sends a `traceparent`, the gateway
exports its spans over OTLP/HTTP to a receiver in the test (tests/otlp_receiver.py, decoding the protocol's
`ExportTraceServiceRequest`; no Collector installs from this project's registries), and a recording upstream shows
what `traceparent` reached it.

Checked: the gateway's server span continues the client's trace, has a child per chain stage and per upstream
attempt (a retry is a second attempt span), carries the HTTP and MCP attributes (never the arguments), and the
upstream's parent is the gateway's attempt span; the audit record and the access log line carry the same ids.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from websockets.asyncio.client import connect as ws_connect

from tests.e2e.test_identity_helpers import audit_record
from tests.harness import default_policies, free_port, running, start_gateway
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.security.support import RecordingUpstream, start_recording_upstream

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mcp.client.websocket as sdk_ws

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

KEYS = {"k1": {"tenant": "acme", "scopes": ["read", "write"]}}
STAGE_SPANS = {"gateway authn", "gateway authz", "gateway ratelimit", "gateway breaker"}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    try:
        yield r
    finally:
        r.stop()


def tracing_config(receiver: OtlpReceiver, workdir: Path, **extra: Any) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    key_file = workdir / "collector-key"
    key_file.write_text("collector-key-by-reference")
    return {
        "tracing": {
            "enabled": True,
            "endpoint": receiver.endpoint,
            "headers": {"x-collector-key": {"file": str(key_file)}},
            # short, so the test does not wait the default 5 s for a batch
            "schedule_delay_seconds": 0.2,
            "service_name": "mcp-gateway-e2e",
            "resource_attributes": {"deployment.environment.name": "test"},
            **extra,
        },
        "logging": {"access_log": True},
    }


def new_traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, f"00-{trace_id}-{parent}-01"


def upstream_parent(upstream: RecordingUpstream, mark: int, rpc_method: str) -> tuple[str, str]:
    """(trace id, parent span id) of the `traceparent` the upstream got with the POST carrying `rpc_method`."""
    entries = upstream.since(mark)
    bodies = {e["n"]: e["body"] for e in entries if e["kind"] == "body"}
    for e in entries:
        if e["kind"] == "http" and e["method"] == "POST" and f'"method":"{rpc_method}"' in bodies.get(e["n"], ""):
            parts = e["headers"]["traceparent"].split("-")
            assert len(parts) == 4 and parts[0] == "00", e["headers"]["traceparent"]
            return parts[1], parts[2]
    raise AssertionError(f"the upstream got no POST of {rpc_method}")


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_span_id == parent.span_id and s.trace_id == parent.trace_id]


async def test_sdk_call_is_traced_end_to_end(tmp_path: Path, receiver: OtlpReceiver) -> None:
    upstream = start_recording_upstream(tmp_path)
    gw = start_gateway(
        tmp_path / "gw",
        default_policies(upstream.url),
        keys=KEYS,
        config=tracing_config(receiver, tmp_path / "gw"),
    )
    trace_id, client_span, traceparent = new_traceparent()
    secret_text = f"argument-{secrets.token_hex(8)}"
    with running(gw, upstream):
        mark = upstream.mark()
        headers = {**gw.auth("k1"), "traceparent": traceparent, "tracestate": "vendor=abc123"}
        async with (
            httpx.AsyncClient(headers=headers, timeout=30) as http,
            streamable_http_client(gw.url(), http_client=http) as (read, write, _),
            ClientSession(read, write) as s,
        ):
            await s.initialize()
            res = await s.call_tool("echo", {"text": secret_text})
            block = res.content[0]
            assert isinstance(block, types.TextContent) and secret_text in block.text

        def tool_call_done(spans: list[ReceivedSpan]) -> bool:
            call = [s for s in spans if s.name == "tools/call echo"]
            return bool(call) and len(children(spans, call[0])) >= len(STAGE_SPANS) + 1

        spans = await asyncio.to_thread(receiver.wait_for, tool_call_done)
        server = next(s for s in spans if s.name == "tools/call echo")
        # the gateway continues the client's trace: same trace id, the client's span as parent
        assert server.kind == "server" and server.trace_id == trace_id and server.parent_span_id == client_span
        kids = children(spans, server)
        assert {s.name for s in kids if s.kind == "internal"} == STAGE_SPANS
        (attempt,) = [s for s in kids if s.kind == "client"]
        assert attempt.name == "POST" and attempt.attributes["http.response.status_code"] == 200
        assert attempt.attributes["server.address"] == "127.0.0.1"
        assert attempt.attributes["server.port"] == upstream.port
        assert "http.request.resend_count" not in attempt.attributes
        # the upstream's parent is the gateway's attempt span, in the client's trace, with its tracestate
        got_trace, got_parent = upstream_parent(upstream, mark, "tools/call")
        assert (got_trace, got_parent) == (trace_id, attempt.span_id)
        call_headers = next(
            e["headers"] for e in upstream.since(mark) if e["kind"] == "http" and e["headers"].get("traceparent")
        )
        assert call_headers["tracestate"] == "vendor=abc123"
        # attributes: HTTP and MCP semantic conventions, the gateway's own; never the arguments or credentials
        a = server.attributes
        assert a["mcp.method.name"] == "tools/call" and a["gen_ai.tool.name"] == "echo"
        assert a["gen_ai.operation.name"] == "execute_tool"
        assert a["http.request.method"] == "POST" and a["http.response.status_code"] == 200
        assert a["server.address"] == "127.0.0.1" and a["server.port"] == gw.port
        assert a["url.path"] == "/mcp/example" and a["client.address"] == "127.0.0.1"
        assert a["mcp_gateway.tenant"] == "acme" and a["mcp_gateway.server"] == "example"
        assert len(a["mcp.session.id"]) == 32 and a["mcp.protocol.version"]
        assert server.resource["service.name"] == "mcp-gateway-e2e"
        assert server.resource["deployment.environment.name"] == "test"
        dumped = json.dumps([s.attributes for s in spans])
        assert secret_text not in dumped and gw.keys["k1"] not in dumped
        # every request of the session is a span of the client's trace (initialize, the stream, DELETE...)
        names = {s.name for s in spans if s.kind == "server" and s.trace_id == trace_id}
        assert {"initialize", "notifications/initialized", "tools/call echo"} <= names
        # the export carried the configured header, resolved from its file
        assert any(r.get("x-collector-key") == "collector-key-by-reference" for r in receiver.requests)
        # the audit record and the access line of the call carry the server span's ids
        rid = a["mcp_gateway.request_id"]
        rec = await audit_record(gw.workdir / "audit.jsonl", rid)
        assert rec["trace_id"] == trace_id and rec["span_id"] == server.span_id
        lines = [json.loads(x) for x in gw.logs().splitlines() if x.startswith("{")]
        access = [x for x in lines if x.get("event") == "request"]
        line = next(x for x in access if x.get("request_id") == rid)
        assert line["trace_id"] == trace_id and line["span_id"] == server.span_id


async def test_retry_is_a_second_attempt_span(tmp_path: Path, receiver: OtlpReceiver) -> None:
    upstream = start_recording_upstream(tmp_path)
    dead = f"http://127.0.0.1:{free_port()}/mcp"  # nothing listens: connect refused, never delivered
    policies = default_policies(
        upstream.url,
        upstreams=[{"url": dead}, {"url": upstream.url}],
        health={"enabled": False},
        breaker={"enabled": False},
        retry={"attempts": 1, "backoff_seconds": 0, "budget_min_retries": 20},
    )
    gw = start_gateway(tmp_path / "gw", policies, keys=KEYS, config=tracing_config(receiver, tmp_path / "gw"))
    trace_id, client_span, traceparent = new_traceparent()
    with running(gw, upstream):
        mark = upstream.mark()
        # round-robin over two instances: one of two sessionless initializes goes to the dead one first
        for _ in range(2):
            async with (
                httpx.AsyncClient(headers={**gw.auth("k1"), "traceparent": traceparent}, timeout=30) as http,
                streamable_http_client(gw.url(), http_client=http) as (read, write, _),
                ClientSession(read, write) as s,
            ):
                await s.initialize()

        def retried(spans: list[ReceivedSpan]) -> bool:
            return any(
                s.name == "initialize" and len([c for c in children(spans, s) if c.kind == "client"]) == 2
                for s in spans
            )

        spans = await asyncio.to_thread(receiver.wait_for, retried)
        server = next(
            s
            for s in spans
            if s.name == "initialize" and len([c for c in children(spans, s) if c.kind == "client"]) == 2
        )
        assert server.trace_id == trace_id and server.parent_span_id == client_span
        first, second = sorted((c for c in children(spans, server) if c.kind == "client"), key=lambda c: c.start_ns)
        assert first.attributes["error.type"] == "connect" and first.status_code == 2
        assert first.attributes["url.full"] == dead
        assert "http.request.resend_count" not in first.attributes
        assert second.attributes["http.request.resend_count"] == 1
        assert second.attributes["http.response.status_code"] == 200
        assert server.attributes["mcp_gateway.retries"] == 1
        # the live upstream saw the second attempt as the parent of that initialize
        parents = set()
        for e in upstream.since(mark):
            if e["kind"] == "http" and e["method"] == "POST" and "traceparent" in e["headers"]:
                parents.add(e["headers"]["traceparent"].split("-")[2])
        assert second.span_id in parents and first.span_id not in parents


async def test_sampler_ratio_zero_exports_nothing_but_still_propagates(tmp_path: Path, receiver: OtlpReceiver) -> None:
    upstream = start_recording_upstream(tmp_path)
    gw = start_gateway(
        tmp_path / "gw",
        default_policies(upstream.url),
        keys=KEYS,
        config=tracing_config(receiver, tmp_path / "gw", sampler={"ratio": 0.0}),
    )
    with running(gw, upstream):
        mark = upstream.mark()
        async with (
            httpx.AsyncClient(headers=gw.auth("k1"), timeout=30) as http,
            streamable_http_client(gw.url(), http_client=http) as (read, write, _),
            ClientSession(read, write) as s,
        ):
            await s.initialize()
            await s.call_tool("add", {"a": 1, "b": 2})
        trace_id, parent = upstream_parent(upstream, mark, "tools/call")
        # every forwarded request (health checks are the gateway's own and carry no request id): flagged unsampled
        forwarded = [e for e in upstream.since(mark) if e["kind"] == "http" and "x-request-id" in e["headers"]]
        assert len(forwarded) >= 3  # initialize, initialized, tools/call (and the GET stream, DELETE)
        flags = {e["headers"]["traceparent"][-2:] for e in forwarded}
        assert flags == {"00"}  # unsampled: the upstream's own sampler follows the decision
        rec = await _wait_record(gw.workdir / "audit.jsonl", "tools/call")
        # the audit record names the trace the upstream saw, though no span of it was exported
        assert rec["trace_id"] == trace_id and rec["span_id"] == parent
        gw.stop()  # the SDK's shutdown exports whatever is queued: nothing was
        assert receiver.spans() == []


async def test_websocket_upgrade_and_messages_are_traced(
    tmp_path: Path, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = start_recording_upstream(tmp_path, transport="websocket")
    gw = start_gateway(
        tmp_path / "gw",
        default_policies(upstream.url, transport="websocket"),
        keys=KEYS,
        config=tracing_config(receiver, tmp_path / "gw"),
    )
    trace_id, client_span, traceparent = new_traceparent()
    with running(gw, upstream):
        mark = upstream.mark()
        # the SDK's WebSocket client takes no headers: credentials and the trace context go in the upgrade request
        headers = {**gw.auth("k1"), "traceparent": traceparent}
        monkeypatch.setattr(sdk_ws, "ws_connect", functools.partial(ws_connect, additional_headers=headers))
        async with (
            sdk_ws.websocket_client(gw.url().replace("http://", "ws://")) as (read, write),
            ClientSession(read, write) as s,
        ):
            await s.initialize()
            await s.call_tool("add", {"a": 1, "b": 2})

        def done(spans: list[ReceivedSpan]) -> bool:
            return any(s.name == "tools/call add" for s in spans) and any(s.name == "GET" for s in spans)

        spans = await asyncio.to_thread(receiver.wait_for, done)
        upgrade = next(s for s in spans if s.name == "GET" and s.kind == "server")
        assert upgrade.trace_id == trace_id and upgrade.parent_span_id == client_span
        kids = children(spans, upgrade)
        assert {"gateway authn", "gateway authz"} <= {k.name for k in kids}
        (connect,) = [k for k in kids if k.kind == "client"]
        assert connect.attributes["http.response.status_code"] == 101
        assert connect.attributes["network.protocol.name"] == "websocket"
        (handshake,) = [e for e in upstream.requests_since(mark) if e["kind"] == "ws"]
        assert handshake["headers"]["traceparent"] == f"00-{trace_id}-{connect.span_id}-01"
        # each message is a span of its own in the client's trace, with the message stages as children
        call = next(s for s in spans if s.name == "tools/call add")
        assert call.trace_id == trace_id and call.parent_span_id == client_span
        assert call.attributes["network.protocol.name"] == "websocket"
        assert {"gateway authz", "gateway ratelimit", "gateway breaker"} <= {k.name for k in children(spans, call)}


async def _wait_record(path: Path, rpc_method: str) -> dict[str, Any]:
    """The audit record of the (one) request with `rpc_method` (the file sink writes in batches: poll, bounded)."""
    for _ in range(100):
        text = await asyncio.to_thread(lambda: path.read_text() if path.exists() else "")
        for line in text.splitlines():
            r: dict[str, Any] = json.loads(line)
            if r.get("rpc_method") == rpc_method:
                return r
        await asyncio.sleep(0.1)
    raise AssertionError(f"no audit record of {rpc_method}")
