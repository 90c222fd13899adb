"""A client's W3C trace context is untrusted input: malformed, oversized, duplicated or injected `traceparent` and
`tracestate` headers never break a request, are never echoed to the client, never reach a log line, span or audit
record, and never cross to the upstream while tracing is on (the upstream gets the gateway's own, valid
`traceparent`; a `tracestate` only when it was valid and came with a valid `traceparent`). Both front doors (the
lean server and aiohttp's). With tracing off the headers are ordinary headers: passed through as they are, still
never echoed. Raw HTTP, so the bytes sent are exactly the hostile ones (docs/security.md "Trace context")."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.tracing.propagation import parse_traceparent
from tests.e2e.test_identity_helpers import PROTOCOL, initialize_msg
from tests.harness import Gateway, default_policies, running, start_gateway
from tests.otlp_receiver import OtlpReceiver
from tests.security.support import RecordingUpstream, http_request, raw_connection, read_one, start_recording_upstream

pytestmark = pytest.mark.e2e

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"


@dataclass(frozen=True)
class Case:
    name: str
    headers: list[tuple[str, str]]
    marker: str  # a string only the hostile value holds: it must appear nowhere the gateway writes
    keeps_trace: bool  # the client's traceparent is valid: the gateway continues its trace


def cases() -> list[Case]:
    m = secrets.token_hex(6)
    members = ",".join(f"k{i}={m}" for i in range(40))  # more than the 32 members W3C allows
    return [
        Case("oversized", [("traceparent", f"00-{m}" + "f" * 8000)], m, False),
        Case("version-00-with-tail", [("traceparent", f"{VALID}-{m}" + "a" * 3000)], m, False),
        Case("upper-case", [("traceparent", f"00-{TRACE.upper()}-{m.upper()}0000-01")], m.upper(), False),
        Case("markup", [("traceparent", f"00-<script>{m}</script>-{PARENT}-01")], m, False),
        Case("json-breaker", [("traceparent", f'00-"}},{{"x":"{m}-{PARENT}-01')], m, False),
        Case("non-ascii", [("traceparent", f"00-{m}-\u00e9\u00ff-01")], m, False),
        Case("version-ff", [("traceparent", f"ff-{TRACE}-{PARENT}-01")], f"ff-{TRACE}", False),
        # the whole value: runs of zeros alone are in every hash chain's genesis
        Case("zero-ids", [("traceparent", f"00-{'0' * 32}-{'0' * 16}-01")], f"00-{'0' * 32}-", False),
        Case("two-headers", [("traceparent", VALID), ("traceparent", f"00-{m}{'a' * 20}-{PARENT}-01")], m, False),
        Case("state-without-parent", [("tracestate", f"k={m}")], m, False),
        Case("state-oversized", [("traceparent", VALID), ("tracestate", f"k={m}" + "v" * 6000)], m, True),
        Case("state-members", [("traceparent", VALID), ("tracestate", members)], m, True),
        Case("state-grammar", [("traceparent", VALID), ("tracestate", f"UPPER={m},a=b=c")], m, True),
    ]


CASES = cases()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    try:
        yield r
    finally:
        r.stop()


async def send(gw: Gateway, extra: list[tuple[str, str]]) -> tuple[Any, str]:
    """The answer, and the request id the upstream sees the request by."""
    rid = secrets.token_hex(8)
    body = json.dumps(initialize_msg()).encode()
    headers = [
        ("Authorization", gw.auth("k1")["Authorization"]),
        ("MCP-Protocol-Version", PROTOCOL),
        ("X-Request-ID", rid),
        *extra,
    ]
    async with raw_connection(gw.port) as (reader, writer):
        # latin-1: the bytes sent are the code points, exactly (a header is bytes on the wire)
        raw = http_request(gw.port, b"", headers=headers, content_length=False).decode()
        writer.write(raw[:-4].encode("latin-1") + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        return await read_one(reader), rid


def upstream_request(upstream: RecordingUpstream, mark: int, rid: str) -> dict[str, Any]:
    # by its request id: the gateway's health checks reach the same upstream meanwhile
    (req,) = [e for e in upstream.requests_since(mark) if e["headers"].get("x-request-id") == rid]
    return req


@pytest.mark.parametrize("fast_path", [True, False], ids=["lean-server", "aiohttp-server"])
async def test_hostile_trace_context_with_tracing_on(tmp_path: Path, receiver: OtlpReceiver, fast_path: bool) -> None:
    upstream = start_recording_upstream(tmp_path)
    gw = start_gateway(
        tmp_path / "gw",
        default_policies(upstream.url),
        keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}},
        config={
            "http": {"fast_path": fast_path},
            "tracing": {"enabled": True, "endpoint": receiver.endpoint, "schedule_delay_seconds": 0.2},
            "logging": {"access_log": True},
        },
    )
    with running(gw, upstream):
        for case in CASES:
            mark = upstream.mark()
            ans, rid = await send(gw, case.headers)
            assert ans is not None and ans.status == 200, (case.name, ans)
            assert ans.json()["result"]["protocolVersion"], case.name
            answer = json.dumps(dict(ans.headers)) + ans.body.decode(errors="replace")
            assert case.marker not in answer, case.name
            assert "traceparent" not in ans.headers and "tracestate" not in ans.headers, case.name
            sent = upstream_request(upstream, mark, rid)["headers"]
            parsed = parse_traceparent(sent.get("traceparent"))
            assert parsed is not None, (case.name, sent.get("traceparent"))
            assert case.marker not in sent["traceparent"] + sent.get("tracestate", ""), case.name
            if case.keeps_trace:
                assert f"{parsed[0]:032x}" == TRACE and f"{parsed[1]:016x}" != PARENT, case.name
            else:
                assert f"{parsed[0]:032x}" != TRACE, case.name
            assert "tracestate" not in sent, case.name  # every case's tracestate is invalid or orphaned
        spans = await asyncio.to_thread(
            receiver.wait_for, lambda s: len([x for x in s if x.name == "initialize"]) >= len(CASES)
        )
        gw.stop()
        logs = gw.logs()
        audit = (gw.workdir / "audit.jsonl").read_text()
    exported = json.dumps([(s.name, s.attributes) for s in spans])
    for case in CASES:
        assert case.marker not in logs, case.name
        assert case.marker not in audit, case.name
        assert case.marker not in exported, case.name
    # the continued traces have the client's span as parent; every other request is a trace of its own
    roots = [s for s in spans if s.name == "initialize" and s.kind == "server"]
    assert len([s for s in roots if s.trace_id == TRACE and s.parent_span_id == PARENT]) == sum(
        c.keeps_trace for c in CASES
    )
    assert all(s.parent_span_id == "" for s in roots if s.trace_id != TRACE)


async def test_hostile_trace_context_with_tracing_off(tmp_path: Path) -> None:
    upstream = start_recording_upstream(tmp_path)
    gw = start_gateway(
        tmp_path / "gw", default_policies(upstream.url), keys={"k1": {"tenant": "acme", "scopes": ["read", "write"]}}
    )
    with running(gw, upstream):
        for case in CASES:
            mark = upstream.mark()
            ans, rid = await send(gw, case.headers)
            assert ans is not None and ans.status == 200, (case.name, ans)
            answer = json.dumps(dict(ans.headers)) + ans.body.decode(errors="replace")
            assert case.marker not in answer, case.name
            # off, the gateway is not part of the trace: the headers are the client's, passed on as any header
            sent = upstream_request(upstream, mark, rid)["headers"]
            for name in ("traceparent", "tracestate"):
                values = [v for k, v in case.headers if k == name]
                if values and all(v.isascii() for v in values):
                    assert sent.get(name) in (", ".join(values), values[-1]), case.name
        gw.stop()
        assert all(case.marker not in gw.logs() for case in CASES)
