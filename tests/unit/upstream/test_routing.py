"""Routing (gateway/upstream/routing.py, chosen through gateway/upstream/choice.py): session ids are checked before
any lookup, a session goes to the instance that issued it and only for its creator, a new request goes to the picked
instance, and the bookkeeping after the upstream's answer binds, keeps or forgets sessions."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gateway.context import RequestContext
from gateway.errors import InvalidRequest, SessionNotFound, UpstreamProtocolError
from gateway.policy.servers import ServerPolicy
from gateway.sessions import MemorySessionStore, SessionBinding, SessionStore
from gateway.testing import api_key_principal, context, rpc, server_policy
from gateway.upstream.balancer import Balancer
from gateway.upstream.choice import UpstreamChoice
from gateway.upstream.routing import (
    MAX_SESSION_ID_LENGTH,
    after_response,
    creates_session,
    presented_session_id,
    valid_session_id,
)

pytestmark = pytest.mark.unit

A, B = "http://a/mcp", "http://b/mcp"
SERVER = server_policy((A, B))
ALICE = api_key_principal(key_id="alice")
MALLORY = api_key_principal(key_id="mallory")


class PickB(Balancer):
    """A balancer that always picks B and counts its picks."""

    def __init__(self) -> None:
        super().__init__(lambda server, url: True, lambda server, url: 0.0)
        self.picks: list[str] = []

    def pick(self, ctx: RequestContext, server: ServerPolicy) -> str:
        self.picks.append(B)
        return B


def choice(sessions: SessionStore) -> UpstreamChoice:
    return UpstreamChoice(sessions, PickB())


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("abc-123", True),
        ("x" * MAX_SESSION_ID_LENGTH, True),
        ("", False),
        ("x" * 257, False),
        ("a b", False),
        ("é", False),
        ("a\nb", False),
    ],
)
def test_valid_session_id(value: str, ok: bool) -> None:
    assert valid_session_id(value) is ok


def test_presented_session_id() -> None:
    assert presented_session_id(CIMultiDict()) is None
    assert presented_session_id(CIMultiDict({"Mcp-Session-Id": "s1"})) == "s1"
    with pytest.raises(InvalidRequest) as dup:
        presented_session_id(CIMultiDict([("Mcp-Session-Id", "s1"), ("Mcp-Session-Id", "s2")]))
    assert dup.value.reason == "duplicate_session_id"
    with pytest.raises(InvalidRequest) as bad:
        presented_session_id(CIMultiDict({"Mcp-Session-Id": "has space"}))
    assert bad.value.reason == "invalid_session_id"


async def test_a_new_request_goes_to_the_picked_instance_once() -> None:
    balancer = PickB()
    ch = UpstreamChoice(MemorySessionStore(), balancer)
    ctx = context(policy=SERVER, principal=ALICE)
    assert await ch.choose(ctx) == B
    assert await ch.choose(ctx) == B  # already resolved: not picked again
    assert balancer.picks == [B] and ctx.upstream_url == B


async def test_a_session_goes_to_its_instance_for_its_creator_only() -> None:
    sessions = MemorySessionStore()
    await sessions.put("example", "s1", SessionBinding(ALICE.binding_id, "example", B, tenant="acme"))
    mine = context(policy=SERVER, principal=ALICE, session_id="s1")
    assert await choice(sessions).choose(mine) == B
    theirs = context(policy=SERVER, principal=MALLORY, session_id="s1")
    with pytest.raises(SessionNotFound):
        await choice(sessions).choose(theirs)
    assert theirs.notes["session"] == "foreign"  # audited as what it was, answered like an unknown session


async def test_a_session_whose_instance_left_the_policy_is_forgotten() -> None:
    sessions = MemorySessionStore()
    await sessions.put("example", "s1", SessionBinding(ALICE.binding_id, "example", "http://gone/mcp"))
    with pytest.raises(SessionNotFound) as info:
        await choice(sessions).choose(context(policy=SERVER, principal=ALICE, session_id="s1"))
    assert info.value.reason == "session_upstream_gone"
    assert await sessions.get("example", "s1") is None


def test_only_a_sessionless_initialize_creates_a_session() -> None:
    init = rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t"}})
    assert creates_session(context("example", init, policy=SERVER))
    assert not creates_session(context("example", init, policy=SERVER, session_id="s1"))
    assert not creates_session(context("example", rpc("tools/list"), policy=SERVER))


async def test_after_response_binds_an_issued_session_and_forgets_an_ended_one() -> None:
    sessions = MemorySessionStore()
    ctx = context(policy=SERVER, principal=ALICE)
    ctx.upstream_url = A
    await after_response(ctx, sessions, 200, "new-1")
    bound = await sessions.get("example", "new-1")
    assert bound is not None and bound.upstream == A and bound.principal == ALICE.binding_id
    gone = context(policy=SERVER, principal=ALICE, session_id="new-1", http_method="DELETE")
    await after_response(gone, sessions, 204, None)
    assert await sessions.get("example", "new-1") is None


async def test_an_upstream_may_not_reuse_another_callers_session_id() -> None:
    sessions = MemorySessionStore()
    await sessions.put("example", "s1", SessionBinding(ALICE.binding_id, "example", A))
    ctx = context(policy=SERVER, principal=MALLORY)
    ctx.upstream_url = A
    with pytest.raises(UpstreamProtocolError):
        await after_response(ctx, sessions, 200, "s1")
    still = await sessions.get("example", "s1")
    assert still is not None and still.principal == ALICE.binding_id


async def test_an_invalid_issued_session_id_is_refused() -> None:
    ctx = context(policy=SERVER, principal=ALICE)
    ctx.upstream_url = A
    with pytest.raises(UpstreamProtocolError):
        await after_response(ctx, MemorySessionStore(), 200, "bad id")
