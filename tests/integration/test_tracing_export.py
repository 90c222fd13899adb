"""The tracing factory's SDK side against a real OTLP/HTTP receiver on loopback (tests/otlp_receiver.py): what
`build_tracing` builds exports the spans of a request, with the configured headers and resource, at shutdown at
the latest; and a collector that never answers cannot hold a stopping gateway past the bound."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.context import RequestContext
from gateway.policy.model import PolicySet
from gateway.policy.snapshot import Snapshot
from gateway.tracing.factory import build_tracing
from gateway.tracing.settings import TracingSettings
from tests.harness import ThreadedApp, free_port
from tests.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.integration

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    try:
        yield r
    finally:
        r.stop()


def context() -> RequestContext:
    return RequestContext(
        request_id="rid",
        snapshot=Snapshot.build(PolicySet(), "test", Path("."), 0.0),
        server_name="example",
        server=None,
        client_ip="127.0.0.1",
        transport="streamable-http",
        http_method="GET",
        headers=CIMultiDictProxy(CIMultiDict(traceparent=f"00-{TRACE}-{PARENT}-01")),
    )


async def test_spans_reach_the_collector_with_headers_and_resource(
    tmp_path: Path, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MGW_TEST_OTLP_KEY", "key-from-the-environment")
    settings = TracingSettings.model_validate(
        {
            "enabled": True,
            "endpoint": receiver.endpoint,
            "headers": {"x-api-key": {"env": "MGW_TEST_OTLP_KEY"}},
            "compression": "gzip",
            "service_name": "gw-under-test",
            "resource_attributes": {"service.namespace": "mcp"},
            # long: the spans must arrive through the shutdown's flush, not a timer
            "schedule_delay_seconds": 60,
        }
    )
    tracing, life = build_tracing(settings, tmp_path)
    assert tracing is not None
    await life.start()
    ctx = context()
    trace = tracing.begin(ctx)
    ctx.http_status = 200
    tracing.observe(ctx)
    await life.stop()
    (span,) = receiver.spans()
    assert span.trace_id == TRACE and span.parent_span_id == PARENT and span.span_id == trace.span_id
    assert span.kind == "server" and span.name == "GET" and span.scope == "mcp-gateway"
    assert span.resource["service.name"] == "gw-under-test" and span.resource["service.namespace"] == "mcp"
    assert span.resource["service.version"]
    assert receiver.requests[0]["x-api-key"] == "key-from-the-environment"
    assert receiver.requests[0]["Content-Encoding"] == "gzip"


async def test_a_collector_that_never_answers_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    release = threading.Event()

    async def hang(_: web.Request) -> web.Response:
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 60)
        return web.Response(status=503)

    port = free_port()
    app = ThreadedApp(port, lambda a: a.router.add_post("/v1/traces", hang))
    app.start()
    try:
        settings = TracingSettings(enabled=True, endpoint=f"http://127.0.0.1:{port}/v1/traces", timeout_seconds=30)
        tracing, life = build_tracing(settings, tmp_path, shutdown_seconds=0.5)
        assert tracing is not None
        ctx = context()
        tracing.begin(ctx)
        tracing.observe(ctx)
        # a hang guard, not a timing assertion: without the bound the SDK would wait for the 30 s export timeout
        await asyncio.wait_for(life.stop(), 20)
    finally:
        release.set()
        app.stop()
