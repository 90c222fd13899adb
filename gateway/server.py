"""Process startup: event loop, logging, listener(s), signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog
from aiohttp import web

from gateway.app import build_app
from gateway.logging import configure_logging
from gateway.settings import Settings

log = structlog.get_logger("gateway.server")


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(settings: Settings, reuse_port: bool = False) -> None:
    app = build_app(settings)
    # handler_cancellation: a client that disconnects cancels its handler, which closes the upstream request
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=settings.http.shutdown_grace_seconds
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.listen.host, settings.listen.port, reuse_port=reuse_port or None, backlog=1024)
    await site.start()
    log.info(
        "gateway listening",
        host=settings.listen.host,
        port=settings.listen.port,
        public_url=settings.public_url,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()


def run(settings: Settings) -> int:
    configure_logging(settings.logging.level, settings.logging.format)
    _install_uvloop()
    asyncio.run(serve(settings))
    return 0
