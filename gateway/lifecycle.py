"""What a component needs done when the gateway starts and stops, returned by each package's factory beside the
component itself (gateway/compose.py runs them in build order and stops them in reverse)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web


async def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Lifecycle:
    name: str
    start: Callable[[], Awaitable[None]] = _nothing
    # runs after the server stopped taking requests and in-flight ones finished
    stop: Callable[[], Awaitable[None]] = _nothing


def cleanup_context(lifecycle: Lifecycle) -> Callable[[web.Application], AsyncIterator[None]]:
    """The lifecycle as an aiohttp cleanup context: started with the app, stopped in reverse order."""

    async def ctx(_: web.Application) -> AsyncIterator[None]:
        await lifecycle.start()
        yield
        await lifecycle.stop()

    return ctx
