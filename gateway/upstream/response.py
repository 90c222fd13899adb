"""What the forward path needs of an upstream answer, whichever HTTP client fetched it.

The lean client's `H1Response` (gateway/net/h1client.py) and the aiohttp adapter's `AiohttpResponse`
(gateway/upstream/aiohttp_client.py, `upstream.client: aiohttp`) both have this shape, so the forwarder, the retry
layer and the transports never depend on which client is configured. Failures of either client are the typed
errors of gateway/net/h1client.py (`H1ConnectError`, `H1Disconnected`, `H1BodyError`, ...).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from multidict import CIMultiDictProxy


class UpstreamBody(Protocol):
    """The answer's body as it arrives: `readany()` (b"" at the end) or `async for chunk in body`. A body that
    breaks off raises `H1BodyError` (`H1BodyTimeout` past the idle timeout)."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def readany(self) -> bytes: ...


class UpstreamResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def content(self) -> UpstreamBody: ...

    def close(self) -> None:
        """Done with the answer: its connection is reused if the body was read to its end, else closed."""

    def end(self) -> None:
        """End a streaming answer on the gateway's decision: the reader gets what is buffered, then a normal end."""
