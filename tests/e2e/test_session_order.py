"""Server-to-client requests on the standalone GET stream arrive through the gateway every time (issue 16, item 1).

The official SDK client opens a session's GET stream right after `notifications/initialized` and sends the next
`tools/call` POST a moment later. The upstream (tests/upstreams/get_stream_requests.py, official SDK) asks its
sampling or elicitation question on the GET stream, and an SDK server loses a question asked before that stream is
open. Directly, the GET the client sent first is also first at the server; through a proxy that delivers the GET
later than the POST, the call waits forever. Each iteration is a fresh session; every one must complete. A call that
has not completed within CALL_TIMEOUT is counted as lost (its question was asked while no GET stream was open); the
bound only guards against a hang, the assertion is on the count.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client

from tests.harness import (
    Gateway,
    Upstream,
    default_policies,
    metric_sample,
    running,
    start_gateway,
    start_upstream,
)

pytestmark = pytest.mark.e2e

KEY = "k1"
ITERATIONS = 30
# a call whose question went to no stream never completes; one that completes does so in milliseconds
CALL_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = start_upstream(tmp_path_factory.mktemp("order-up"), module="tests.upstreams.get_stream_requests")
    with running(up):
        yield up


def _gateway(workdir: Path, upstream: Upstream, redis: str | None = None) -> Gateway:
    config: dict[str, Any] = {}
    if redis is not None:
        config["redis"] = {"url": redis, "key_prefix": f"mgw-order-{workdir.name}:"}
    return start_gateway(
        workdir,
        default_policies(upstream.url),
        keys={KEY: {"tenant": "acme", "scopes": ["read", "write"]}},
        config=config,
    )


# how far the POST leads the GET in PostFirstTiming: far more than the upstream needs to ask its question
POST_LEAD = 0.01


class HeldGet(httpx.AsyncBaseTransport):
    """A session's GET is held until the first `tools/call` POST: which of the two goes out first, and how far
    ahead, is the subclass's `GET_DELAY` (after the POST released the GET) and `POST_DELAY` (after it released it)."""

    GET_DELAY = 0.0
    # None: the POST goes out at once; 0.0: on the next turn of the client's event loop, behind the GET
    POST_DELAY: float | None = 0.0

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._get_gate: asyncio.Event | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            gate = self._get_gate = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CALL_TIMEOUT):
                    await gate.wait()
            if self.GET_DELAY:
                await asyncio.sleep(self.GET_DELAY)
        elif request.method == "POST" and self._get_gate is not None and b'"tools/call"' in request.content:
            self._get_gate.set()
            self._get_gate = None
            if self.POST_DELAY is not None:
                await asyncio.sleep(self.POST_DELAY)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class TypeScriptTiming(HeldGet):
    """The conformance client's timing on the Python SDK client: the TypeScript SDK opens its GET stream once the
    `notifications/initialized` POST is answered, so its GET and the next `tools/call` POST leave within a
    millisecond of each other, GET first. The Python SDK starts its GET before that notification's POST, which hides
    a proxy's reordering; here a session's GET is held until the first `tools/call` POST, sent first, and the POST
    follows on the next turn of the client's event loop (`asyncio.sleep(0)`)."""


class PostFirstTiming(HeldGet):
    """The order tickets cannot settle: the `tools/call` POST reaches the gateway before the session's GET (a client
    whose GET needs a new connection while its POST rides a kept-alive one). The GET is held until that POST has
    gone out and follows it POST_LEAD later. The gateway expects the GET of a session whose client declared
    sampling or elicitation, and holds the first request POST (at most 250 ms) until the GET arrives and is open
    upstream. Directly the same timing depends on how fast the server asks, so there is no direct control here."""

    GET_DELAY = POST_LEAD
    POST_DELAY = None


@contextlib.asynccontextmanager
async def session(
    url: str, headers: dict[str, str], timing: type[httpx.AsyncBaseTransport] = TypeScriptTiming
) -> AsyncIterator[ClientSession]:
    async def sampling(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled"), model="test"
        )

    async def elicit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"confirmed": True})

    async with (
        httpx.AsyncClient(headers=headers, timeout=30, transport=timing()) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
        ClientSession(read, write, sampling_callback=sampling, elicitation_callback=elicit) as s,
    ):
        await s.initialize()
        yield s


async def completed_calls(
    url: str,
    headers: dict[str, str],
    iterations: int,
    timing: type[httpx.AsyncBaseTransport] = TypeScriptTiming,
) -> list[str]:
    """Run `iterations` fresh sessions, each making one call whose question arrives on the GET stream; the
    outcome of each ('ok' or 'lost')."""
    outcomes: list[str] = []
    for i in range(iterations):
        async with session(url, headers, timing) as s:
            tool, args = ("sample", {"prompt": "hi"}) if i % 2 == 0 else ("confirm", {"action": "deploy"})
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    result = await s.call_tool(tool, args)
            except TimeoutError:
                outcomes.append("lost")
                continue
            text = result.content[0].text if isinstance(result.content[0], types.TextContent) else ""
            assert text in ("sampled", "deploy: accept True"), result
            outcomes.append("ok")
    return outcomes


async def test_direct_baseline(upstream: Upstream) -> None:
    """Directly, the client's order reaches the server: the control that makes the gateway tests meaningful."""
    outcomes = await completed_calls(upstream.url, {}, 10)
    assert outcomes.count("lost") == 0, outcomes


async def test_get_stream_requests_all_arrive_through_the_gateway(tmp_path: Path, upstream: Upstream) -> None:
    gw = _gateway(tmp_path, upstream)
    with running(gw):
        outcomes = await completed_calls(gw.url(), gw.auth(KEY), ITERATIONS)
    assert outcomes.count("lost") == 0, outcomes


async def test_get_stream_requests_all_arrive_with_redis_sessions(
    tmp_path: Path, upstream: Upstream, redis_url: str
) -> None:
    gw = _gateway(tmp_path, upstream, redis=redis_url)
    with running(gw):
        outcomes = await completed_calls(gw.url(), gw.auth(KEY), ITERATIONS)
    assert outcomes.count("lost") == 0, outcomes


# a lost call costs CALL_TIMEOUT: without the wait most of these would be lost, and the count must still be reported
POST_FIRST_ITERATIONS = 10


@pytest.mark.timeout(60 + POST_FIRST_ITERATIONS * CALL_TIMEOUT)
@pytest.mark.parametrize("backend", ["embedded", "redis"])
async def test_a_post_ahead_of_its_get_waits_for_it(
    tmp_path: Path, upstream: Upstream, backend: str, request: pytest.FixtureRequest
) -> None:
    redis = request.getfixturevalue("redis_url") if backend == "redis" else None
    gw = _gateway(tmp_path, upstream, redis=redis)
    with running(gw):
        outcomes = await completed_calls(gw.url(), gw.auth(KEY), POST_FIRST_ITERATIONS, PostFirstTiming)
        async with httpx.AsyncClient(timeout=10) as c:
            scrape = (await c.get(f"{gw.base}/metrics")).text
    assert outcomes.count("lost") == 0, outcomes
    # every session's first call reached the gateway ahead of its GET and waited for it
    name = "mcp_gateway_session_order_first_get_waits_total"
    assert metric_sample(scrape, name, result="arrived") == POST_FIRST_ITERATIONS, scrape
    assert metric_sample(scrape, name, result="timeout") == 0
