"""The OpenTelemetry SDK side: tracer provider, parent-based ratio sampler, batch span processor, OTLP/HTTP exporter.

Ending a span on the request path only appends it to the batch processor's bounded queue (a full queue drops the
span, it never waits); the SDK's own thread encodes and exports batches, so no export work runs on the event loop
(its GIL share is bounded by the interpreter's switch interval like any thread's: docs/operations.md "Loop
budget"). The provider is this gateway's own, never installed as the process-global one.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer

from gateway.tracing.settings import TracingSettings
from gateway.version import VERSION

# how often one kind of SDK log line (a full queue, a failed export) may be written
SDK_LOG_INTERVAL_SECONDS = 30.0


class RepeatFilter(logging.Filter):
    """At most one line per message template per interval from the SDK's loggers: with the collector down, the SDK
    warns once per dropped span (thousands a second under load). The next line written says how many were left
    out."""

    def __init__(self, interval: float = SDK_LOG_INTERVAL_SECONDS) -> None:
        super().__init__()
        self._interval = interval
        self._lock = threading.Lock()  # the SDK logs from its export thread and from the loop's
        self._last: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        with self._lock:
            last, skipped = self._last.get(key, (float("-inf"), 0))
            if now - last < self._interval:
                self._last[key] = (last, skipped + 1)
                return False
            if len(self._last) >= 256 and key not in self._last:
                self._last.clear()  # the SDK has a few dozen templates: this only bounds a surprise
            self._last[key] = (now, 0)
        if skipped:
            record.msg = f"{record.msg} ({skipped} more like it in the last {self._interval:.0f} s not logged)"
        return True


def quiet_sdk_logs() -> None:
    logger = logging.getLogger("opentelemetry")
    if not any(isinstance(f, RepeatFilter) for f in logger.filters):
        logger.addFilter(RepeatFilter())


def build_provider(settings: TracingSettings, base_dir: Path) -> TracerProvider:
    resource = Resource.create(
        {"service.version": VERSION, **settings.resource_attributes, "service.name": settings.service_name}
    )
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(settings.sampler.ratio)),
        resource=resource,
        # stopped by the gateway's lifecycle (gateway/tracing/factory.py), not by an atexit hook
        shutdown_on_exit=False,
    )
    exporter = OTLPSpanExporter(
        endpoint=settings.endpoint,
        headers=settings.resolve_headers(base_dir),
        timeout=settings.timeout_seconds,
        compression=Compression.Gzip if settings.compression == "gzip" else Compression.NoCompression,
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=settings.max_queue_size,
            schedule_delay_millis=settings.schedule_delay_seconds * 1000,
            max_export_batch_size=settings.max_export_batch_size,
        )
    )
    quiet_sdk_logs()
    return provider


def tracer_of(provider: TracerProvider) -> Tracer:
    return provider.get_tracer("mcp-gateway", VERSION)
