"""Factory of tracing: the `Tracing` component (None when `tracing.enabled` is false) and its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

import structlog

from gateway.lifecycle import Lifecycle
from gateway.tracing.settings import TracingSettings
from gateway.tracing.spans import Tracing

log = structlog.get_logger("gateway.tracing")

# how long a stopping gateway waits for the spans still queued to be exported: a collector that is down must not
# hold the process past its drain (the SDK's own shutdown would wait up to 30 s)
SHUTDOWN_EXPORT_SECONDS = 5.0


def build_tracing(
    settings: TracingSettings, base_dir: Path, shutdown_seconds: float = SHUTDOWN_EXPORT_SECONDS
) -> tuple[Tracing | None, Lifecycle]:
    """Tracing off: no tracer, no SDK loaded, nothing on the request path. On: the SDK's provider, shut down last
    (after the server stopped and the audit was flushed), which exports what is queued."""
    if not settings.enabled:
        return None, Lifecycle("tracing")
    # the SDK and its exporter (protobuf, requests) take ~0.4 s and ~13 MB to import: only a gateway that traces
    # pays for them
    from gateway.tracing.provider import build_provider, tracer_of  # noqa: PLC0415

    provider = build_provider(settings, base_dir)

    async def stop() -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def shutdown() -> None:
            try:
                provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed while waiting: nobody to tell
                    loop.call_soon_threadsafe(finished)

        # a daemon thread, not the loop's executor (whose threads the interpreter joins at exit): past the bound,
        # an export still waiting on the collector is abandoned with the process
        threading.Thread(target=shutdown, name="tracing-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(done, shutdown_seconds)
        except TimeoutError:
            log.warning("spans still queued at shutdown were not exported in time", seconds=shutdown_seconds)

    return Tracing(tracer_of(provider)), Lifecycle("tracing", stop=stop)
