"""An OTLP/HTTP traces receiver: `POST /v1/traces` with an `ExportTraceServiceRequest` (protobuf, optionally gzip),
answered with an `ExportTraceServiceResponse`, as a collector does. No OpenTelemetry Collector installs from the
package registries this project uses (PyPI, npm, Debian), so the tests receive what the gateway exports here,
decoded with the `opentelemetry-proto` package: the protocol the collector speaks, checked span by span.

In a test: `OtlpReceiver().start()` serves it from a thread (tests/harness.py ThreadedApp); `.spans()` are the
decoded spans so far, `.wait_for(predicate)` waits for the gateway's batch to arrive.

For the benchmark (`python -m tests.otlp_receiver --port N`): a sink that answers and counts, without decoding
(decoding would spend the shared cores the targets are measured on).
"""

from __future__ import annotations

import argparse
import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.harness import ThreadedApp, free_port

_OK = ExportTraceServiceResponse().SerializeToString()
KIND_NAMES = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which is None:
        return None
    return getattr(v, which)


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    resource: dict[str, Any]
    scope: str
    start_ns: int
    end_ns: int


class OtlpReceiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self.requests: list[dict[str, str]] = []  # each export's headers (what the gateway sent the collector)
        self._app = ThreadedApp(self.port, lambda app: app.router.add_post("/v1/traces", self._export))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def start(self) -> OtlpReceiver:
        self._app.start()
        return self

    def stop(self) -> None:
        self._app.stop()

    async def _export(self, request: web.Request) -> web.Response:
        # aiohttp's server undoes `Content-Encoding: gzip` itself; a body still in gzip would start with its magic
        body = await request.read()
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        got: list[ReceivedSpan] = []
        for rs in req.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(
                        ReceivedSpan(
                            name=s.name,
                            kind=KIND_NAMES.get(s.kind, str(s.kind)),
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            status_code=s.status.code,
                            resource=resource,
                            scope=ss.scope.name,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                        )
                    )
        with self._lock:
            self._spans.extend(got)
            self.requests.append(dict(request.headers))
        return web.Response(body=_OK, content_type="application/x-protobuf")

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def wait_for(self, done: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0) -> list[ReceivedSpan]:
        """The spans once `done(spans)` holds; fails with what arrived when it does not within `timeout`."""
        end = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if done(spans):
                return spans
            if time.monotonic() > end:
                raise AssertionError(f"expected spans did not arrive; got {[(s.name, s.kind) for s in spans]}")
            time.sleep(0.1)


def _sink(port: int) -> None:
    count = {"requests": 0, "bytes": 0}

    async def export(request: web.Request) -> web.Response:
        count["requests"] += 1
        count["bytes"] += len(await request.read())
        return web.Response(body=_OK, content_type="application/x-protobuf")

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(count)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", export)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    _sink(parser.parse_args().port)
