"""The one step that chooses a request's upstream instance (gateway/upstream/choice.py): the session's instance or
the balancer's pick, once per request; another instance only for a sessionless request; the session lookup started
early only where it can share the limiter's round trip; the outstanding count on the chosen instance."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.sessions import MemorySessionStore, SessionBinding
from gateway.testing import api_key_principal, context, server_policy
from gateway.upstream.balancer import Balancer
from gateway.upstream.choice import UpstreamChoice

pytestmark = pytest.mark.unit

A, B, C = "http://a/mcp", "http://b/mcp", "http://c/mcp"
SERVER = server_policy((A, B, C))
ALICE = api_key_principal(key_id="alice")


class PrefetchingStore(MemorySessionStore):
    """An in-memory store that says when a lookup was started early (the Redis store's prefetch does real work)."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[tuple[str, str]] = []

    def prefetch(self, server: str, session_id: str) -> Awaitable[Any] | None:
        self.started.append((server, session_id))
        return None


ALL = frozenset((A, B, C))


def balancer(healthy: frozenset[str] = ALL) -> Balancer:
    return Balancer(lambda server, url: url in healthy, lambda server, url: 0.0)


def choice(sessions: MemorySessionStore | None = None, healthy: frozenset[str] = ALL) -> UpstreamChoice:
    return UpstreamChoice(sessions if sessions is not None else MemorySessionStore(), balancer(healthy))


async def test_a_sessionless_request_gets_the_balancers_pick_once() -> None:
    ch = choice()
    ctx = context(policy=SERVER, principal=ALICE)
    first = await ch.choose(ctx)
    assert first in (A, B, C) and ctx.upstream_url == first
    # the rotation would move on; a second ask for the same request returns the first answer
    assert await ch.choose(ctx) == first
    assert await ch.choose(context(policy=SERVER, principal=ALICE)) != first


async def test_a_session_keeps_its_instance() -> None:
    sessions = MemorySessionStore()
    await sessions.put("example", "s1", SessionBinding(ALICE.binding_id, "example", C, tenant="acme"))
    ch = choice(sessions)
    for _ in range(3):
        assert await ch.choose(context(policy=SERVER, principal=ALICE, session_id="s1")) == C


def test_another_instance_avoids_those_tried_and_fails_when_none_is_left() -> None:
    ch = choice()
    assert ch.another("example", SERVER, [A, B]) == C
    with pytest.raises(GatewayError):
        ch.another("example", SERVER, [A, B, C])
    unhealthy = choice(healthy=frozenset({A}))
    with pytest.raises(GatewayError):
        unhealthy.another("example", SERVER, [A])


def test_begin_counts_the_request_outstanding_until_ended() -> None:
    bal = balancer()
    end = UpstreamChoice(MemorySessionStore(), bal).begin("example", B)
    assert bal.outstanding("example", B) == 1
    end()
    assert bal.outstanding("example", B) == 0


@pytest.mark.parametrize(
    ("transport", "session_id", "started"),
    [
        pytest.param("streamable-http", "s1", True, id="streamable-with-session"),
        pytest.param("streamable-http", None, False, id="no-session"),
        pytest.param("sse", "s1", False, id="legacy-sse"),
        pytest.param("websocket", "s1", False, id="websocket"),
    ],
)
def test_the_session_lookup_starts_early_only_on_streamable_http(
    transport: str, session_id: str | None, started: bool
) -> None:
    store = PrefetchingStore()
    ctx = context(policy=SERVER, principal=ALICE, transport=transport, session_id=session_id)
    choice(store).prefetch(ctx)
    assert store.started == ([("example", "s1")] if started else [])


def test_a_session_already_looked_up_is_not_prefetched_again() -> None:
    store = PrefetchingStore()
    ctx = context(policy=SERVER, principal=ALICE, session_id="s1")
    ctx.session_binding = SessionBinding(ALICE.binding_id, "example", A)
    choice(store).prefetch(ctx)
    assert store.started == []
