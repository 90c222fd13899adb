"""Balancing (weighted round-robin, least-outstanding, skipping), retry eligibility and the retry budget."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from gateway.context import RequestContext, UpstreamOutcome
from gateway.errors import CircuitOpen, ServiceUnavailable
from gateway.jsonrpc import parse_message
from gateway.policy.resilience import RetryPolicy
from gateway.policy.servers import ServerPolicy
from gateway.upstream.balancer import Balancer
from gateway.upstream.resilient import RetryBudget, retry_reason

pytestmark = pytest.mark.unit

A, B, C = "http://a/mcp", "http://b/mcp", "http://c/mcp"


def server(*ups: tuple[str, int], **kw: Any) -> ServerPolicy:
    return ServerPolicy.model_validate({"upstreams": [{"url": u, "weight": w} for u, w in ups], **kw})


def test_weighted_round_robin_follows_weights_and_interleaves() -> None:
    bal = Balancer(lambda s, u: True, lambda s, u: 0.0)
    srv = server((A, 3), (B, 1))
    picks = [bal.choose("s", srv) for _ in range(8)]
    assert Counter(picks) == {A: 6, B: 2}
    # smooth: B is not starved until the end of a cycle
    assert B in picks[:4]


def test_unhealthy_instances_are_skipped() -> None:
    down = {B}
    bal = Balancer(lambda s, u: u not in down, lambda s, u: 0.0)
    srv = server((A, 1), (B, 1), (C, 1))
    assert set(bal.choose("s", srv) for _ in range(9)) == {A, C}


def test_open_breakers_are_skipped_and_all_open_gives_circuit_open() -> None:
    waits = {A: 3.0, B: 0.0}
    bal = Balancer(lambda s, u: True, lambda s, u: waits[u])
    srv = server((A, 1), (B, 1))
    assert {bal.choose("s", srv) for _ in range(4)} == {B}
    waits[B] = 7.0
    with pytest.raises(CircuitOpen) as exc:
        bal.choose("s", srv)
    assert exc.value.status == 503 and exc.value.headers["Retry-After"] == "3"


def test_no_healthy_instance_gives_503() -> None:
    bal = Balancer(lambda s, u: False, lambda s, u: 0.0)
    with pytest.raises(ServiceUnavailable) as exc:
        bal.choose("s", server((A, 1), (B, 1)))
    assert exc.value.status == 503 and exc.value.reason == "no_healthy_upstream"
    assert "Retry-After" in exc.value.headers


def test_least_outstanding_prefers_the_idle_instance_per_weight() -> None:
    bal = Balancer(lambda s, u: True, lambda s, u: 0.0)
    srv = server((A, 1), (B, 1), load_balancing="least-outstanding")
    ends = [bal.begin("s", A) for _ in range(3)]
    assert {bal.choose("s", srv) for _ in range(5)} == {B}
    for end in ends:
        end()
        end()  # idempotent
    assert bal.outstanding("s", A) == 0
    assert {bal.choose("s", srv) for _ in range(6)} == {A, B}
    heavy = server((A, 4), (B, 1), load_balancing="least-outstanding")
    for _ in range(2):
        bal.begin("s", A)
    bal.begin("s", B)  # A: 2/4 = 0.5 load, B: 1/1
    assert bal.choose("s", heavy) == A


def test_exclude_is_respected() -> None:
    bal = Balancer(lambda s, u: True, lambda s, u: 0.0)
    assert {bal.choose("s", server((A, 1), (B, 1)), exclude=[A]) for _ in range(4)} == {B}


def ctx_for(body: dict[str, Any] | list[Any], srv: ServerPolicy, http_method: str = "POST") -> RequestContext:
    raw = orjson.dumps(body)
    return RequestContext(
        request_id="t",
        snapshot=None,  # type: ignore[arg-type]
        server_name="s",
        server=srv,
        client_ip="127.0.0.1",
        transport="streamable-http",
        http_method=http_method,
        body=raw,
        message=parse_message(raw, None) if http_method == "POST" else None,
    )


def call(method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


def test_retry_eligibility() -> None:
    srv = server((A, 1), retry={"idempotent_tools": ["lookup"]})
    connect = UpstreamOutcome(A, None, "connect", 0.01)
    reset = UpstreamOutcome(A, None, "reset", 0.01)
    timeout = UpstreamOutcome(A, None, "timeout", 1.0)
    bad_gw = UpstreamOutcome(A, 502, None, 0.01)
    err500 = UpstreamOutcome(A, 500, None, 0.01)
    write = ctx_for(call("tools/call", name="delete_all", arguments={}), srv)
    # never delivered: even a write may go again
    assert retry_reason(write, srv, connect) == "not_delivered"
    assert retry_reason(write, srv, reset) is None
    assert retry_reason(write, srv, bad_gw) is None
    idem = ctx_for(call("tools/call", name="lookup", arguments={}), srv)
    assert retry_reason(idem, srv, reset) == "read_only"
    read = ctx_for(call("tools/list"), srv)
    assert retry_reason(read, srv, reset) == "read_only"
    assert retry_reason(read, srv, bad_gw) == "read_only"
    assert retry_reason(read, srv, err500) is None
    assert retry_reason(read, srv, timeout) is None  # a hung upstream is not asked twice
    init = ctx_for(call("initialize", protocolVersion="2025-06-18", capabilities={}, clientInfo={}), srv)
    assert retry_reason(init, srv, reset) is None
    note = ctx_for({"jsonrpc": "2.0", "method": "notifications/initialized"}, srv)
    assert retry_reason(note, srv, reset) is None
    assert retry_reason(note, srv, connect) == "not_delivered"


def test_a_pool_wait_is_retried_only_on_another_instance() -> None:
    one = server((A, 1))
    two = server((A, 1), (B, 1))
    pool = UpstreamOutcome(A, None, "pool", 0.3)
    write = call("tools/call", name="delete_all", arguments={})
    # the wait already took max_wait on this instance: asking it again would only wait as long once more
    assert retry_reason(ctx_for(write, one), one, pool) is None
    assert retry_reason(ctx_for(write, two), two, pool) == "pool_wait"  # never sent, so even a write may go
    in_session = ctx_for(write, two)
    in_session.session_id = "s1"  # a session stays on its instance
    assert retry_reason(in_session, two, pool) is None


def test_retry_budget_caps_extra_load_at_the_ratio() -> None:
    now = [1000.0]
    budget = RetryBudget(clock=lambda: now[0])
    policy = RetryPolicy(budget_ratio=0.2, budget_min_retries=0)
    granted = 0
    for _ in range(100):
        budget.note_request()
        if budget.try_spend(policy):
            granted += 1
    assert granted == 20
    # the window slides: after 10 s the old requests no longer pay for retries
    now[0] += 11
    assert not budget.try_spend(policy)
    with_floor = RetryBudget(clock=lambda: now[0])
    floor = RetryPolicy(budget_ratio=0.2, budget_min_retries=3)
    assert [with_floor.try_spend(floor) for _ in range(4)] == [True, True, True, False]
