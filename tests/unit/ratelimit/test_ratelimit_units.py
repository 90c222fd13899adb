"""Pure pieces of the limiter: request costs, RateLimit headers, IP strikes and blocks, fair-share bookkeeping."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gateway.auth.principal import Principal
from gateway.context import RequestContext
from gateway.filters.ratelimit import request_cost
from gateway.jsonrpc import parse_message
from gateway.policy.model import PolicySet
from gateway.policy.snapshot import Snapshot
from gateway.ratelimit.compiled import compile_limits
from gateway.ratelimit.gcra import TierResult
from gateway.ratelimit.headers import limit_headers, policy_header, ratelimit_header
from gateway.ratelimit.ipblock import DdosParams, IpBlocker, parse_allowlist
from gateway.ratelimit.metrics import RateLimitMetrics
from gateway.ratelimit.shares import FairParams, FairShares

pytestmark = pytest.mark.unit


def snapshot(limits: dict[str, Any], tool_costs: dict[str, int] | None = None) -> Snapshot:
    policy = PolicySet.model_validate(
        {
            "servers": {"servers": {"s": {"upstreams": [{"url": "http://x"}], "tool_costs": tool_costs or {}}}},
            "tenants": {"tenants": {"acme": {"weight": 2}}},
            "limits": limits,
        }
    )
    return Snapshot.build(policy, "v1", Path("."), time.time())


def ctx_for(snap: Snapshot, body: Any, http_method: str = "POST") -> RequestContext:
    ctx = RequestContext("r", snap, "s", snap.servers["s"], "10.0.0.1", "streamable-http", http_method)
    if body is not None:
        ctx.message = parse_message(orjson.dumps(body), "2025-03-26")
    ctx.principal = Principal("acme", "key:k", key_id="k")
    return ctx


def req(method: str, rid: int = 1, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}


def test_only_requests_are_charged() -> None:
    snap = snapshot({"costs": {"initialize": 0, "ping": 0, "default": 1}}, {"heavy": 5})
    c = compile_limits(snap)
    assert request_cost(ctx_for(snap, {"jsonrpc": "2.0", "method": "notifications/cancelled"}), c) == (0, False)
    assert request_cost(ctx_for(snap, {"jsonrpc": "2.0", "id": 7, "result": {}}), c) == (0, False)
    assert request_cost(ctx_for(snap, req("initialize")), c) == (0, False)
    assert request_cost(ctx_for(snap, req("ping")), c) == (0, False)
    assert request_cost(ctx_for(snap, req("tools/list")), c) == (1, False)
    assert request_cost(ctx_for(snap, req("tools/call", name="heavy")), c) == (5, True)
    assert request_cost(ctx_for(snap, req("tools/call", name="light")), c) == (1, True)
    assert request_cost(ctx_for(snap, None, "GET"), c) == (0, False)
    assert request_cost(ctx_for(snap, None, "DELETE"), c) == (0, False)
    batch = [req("tools/call", 1, name="heavy"), req("tools/list", 2), {"jsonrpc": "2.0", "method": "notifications/x"}]
    assert request_cost(ctx_for(snap, batch), c) == (6, True)


def test_costs_from_policy() -> None:
    snap = snapshot({"costs": {"initialize": 2, "ping": 1, "stream": 3}})
    c = compile_limits(snap)
    assert request_cost(ctx_for(snap, req("initialize")), c)[0] == 2
    assert request_cost(ctx_for(snap, req("ping")), c)[0] == 1
    assert request_cost(ctx_for(snap, None, "GET"), c)[0] == 3


def test_headers() -> None:
    results = [
        TierResult("global", True, 90, 0.0, 1.0, 100, 0.6, False),
        TierResult("tenant", True, 3, 0.0, 2.5, 20, 0.5, False),
        TierResult("user", True, 0, 0.0, 9.0, 1, 1.0, True),  # shadow: not advertised
    ]
    h = limit_headers(results)
    assert h["RateLimit-Policy"] == '"global";q=100;w=60, "tenant";q=20;w=10'
    assert h["RateLimit"] == '"tenant";r=3;t=3'
    refused = TierResult("tenant", False, 0, 1.2, 10.0, 20, 0.5, False)
    h = limit_headers([results[0], refused], refused)
    assert h["RateLimit"] == '"tenant";r=0;t=2'


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def ddos(strikes: int = 3, allow: tuple[str, ...] = ()) -> DdosParams:
    return DdosParams(True, strikes, 60.0, (60.0, 300.0), 3600.0, parse_allowlist(allow))


def test_strikes_block_and_escalate() -> None:
    clock = Clock()
    blocker = IpBlocker(RateLimitMetrics(CollectorRegistry()), clock=clock)
    p = ddos()
    for _ in range(2):
        blocker.strike("1.2.3.4", p)
    assert blocker.blocked_for("1.2.3.4") == 0
    blocker.strike("1.2.3.4", p)
    assert blocker.blocked_for("1.2.3.4") == pytest.approx(60)
    clock.t += 61
    assert blocker.blocked_for("1.2.3.4") == 0
    for _ in range(3):
        blocker.strike("1.2.3.4", p)
    assert blocker.blocked_for("1.2.3.4") == pytest.approx(300)  # second block: the next length
    assert blocker.blocked_for("5.6.7.8") == 0


def test_strikes_outside_the_window_do_not_count() -> None:
    clock = Clock()
    blocker = IpBlocker(RateLimitMetrics(CollectorRegistry()), clock=clock)
    p = ddos()
    for _ in range(5):
        blocker.strike("1.2.3.4", p)
        clock.t += 31  # never three within 60 s
    assert blocker.blocked_for("1.2.3.4") == 0


def test_allowlisted_networks_are_never_blocked() -> None:
    blocker = IpBlocker(RateLimitMetrics(CollectorRegistry()), clock=Clock())
    p = ddos(allow=("10.0.0.0/8",))
    for _ in range(10):
        blocker.strike("10.1.2.3", p)
    assert blocker.blocked_for("10.1.2.3") == 0


def test_fair_shares_newcomer_and_recompute() -> None:
    metrics = RateLimitMetrics(CollectorRegistry())
    params = FairParams(capacity=30, interval=1.0, active_window=5.0, headroom=0.0, weights={"a": 1, "b": 1, "c": 1})
    fair = FairShares(lambda: params, metrics, clock=lambda: 100.0)
    assert fair.share("a") == pytest.approx(30)  # nobody active: the whole capacity
    fair.recompute({"a": 100, "b": 3, "c": 10}, params, 100.0)
    assert fair.share("b") == pytest.approx(3) and fair.share("a") == pytest.approx(17)
    # a newcomer gets the share it would have beside the three active tenants
    assert fair.share("d") == pytest.approx(30 / 4)
    text = metrics.fair_share.collect()[0].samples
    assert {s.labels["tenant"] for s in text} == {"a", "b", "c"}
    # a tenant idle in the last interval but active lately: its weight is not counted twice
    fair.recompute({"a": 100}, params, 101.0)
    assert fair.share("b") == pytest.approx(30 / 3)
    assert {s.labels["tenant"] for s in metrics.fair_share.collect()[0].samples} == {"a"}  # idle labels go


def test_tenant_default_caps_every_tenant_share() -> None:
    snap = snapshot({"global": {"rate": 60, "per": "second"}, "tenant_default": {"rate": 10, "per": "second"}})
    fair = compile_limits(snap).fair
    assert fair is not None and fair.capacity == pytest.approx(60) and fair.ceiling == pytest.approx(10)
    shares = FairShares(lambda: fair, RateLimitMetrics(CollectorRegistry()), clock=lambda: 1.0)
    shares.recompute({"acme": 100, "unknown-tenant": 100}, fair, 1.0)
    assert shares.share("acme") == pytest.approx(10)
    assert shares.share("unknown-tenant") == pytest.approx(10)  # tenants not in tenants.yaml are capped too
    assert shares.share("newcomer") == pytest.approx(10)
    assert fair.weights["acme"] == 2


def test_no_fair_share_without_a_global_rate() -> None:
    assert compile_limits(snapshot({"tenant_default": {"rate": 10}})).fair is None
    assert compile_limits(snapshot({"global": {"rate": 10}, "fairness": {"enabled": False}})).fair is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["global", "tenant", "user", "key", "ip"]),
            st.booleans(),
            st.integers(0, 1000),
            st.floats(0, 100),
            st.floats(0, 100),
            st.floats(1, 1000),
            st.floats(0.001, 10),
            st.booleans(),
        ),
        max_size=5,
    ),
    st.booleans(),
)
def test_limit_headers_are_policy_header_and_ratelimit_header(
    rows: list[tuple[str, bool, int, float, float, float, float, bool]], refuse: bool
) -> None:
    # limit_headers builds both headers in one pass and caches policy entries: it must say byte for byte what the
    # plain formatting (the header definitions, spelled out here) says
    results = [TierResult(*row) for row in rows]
    enforced = [r for r in results if not r.shadow]
    refused = enforced[0] if refuse and enforced else None
    expected: dict[str, str] = {}
    if enforced:
        expected["RateLimit-Policy"] = ", ".join(
            f'"{r.name}";q={max(1, math.floor(r.burst))};w={max(1, math.ceil(r.interval * r.burst - 1e-9))}'
            for r in enforced
        )
    if refused is not None:
        expected["RateLimit"] = f'"{refused.name}";r=0;t={max(1, math.ceil(refused.retry_after - 1e-9))}'
    elif enforced:
        tight = min(enforced, key=lambda r: (r.remaining, -r.reset))
        expected["RateLimit"] = f'"{tight.name}";r={tight.remaining};t={max(0, math.ceil(tight.reset - 1e-9))}'
    for _ in range(2):  # the second time from the cache
        assert limit_headers(results, refused) == expected
        assert policy_header(results) == expected.get("RateLimit-Policy", "")
        assert ratelimit_header(results, refused) == expected.get("RateLimit")


def test_many_newcomers_do_not_each_reallocate_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to INLINE_TENANTS tenants an arrival reallocates every share at once; beyond, the newcomer gets its share
    beside the tenants active lately and the next recomputation (in a thread at that size) allocates it: n arrivals
    must not cost n reallocations over n tenants on the event loop (7 s of loop time for 1,000)."""
    from gateway.ratelimit import shares as shares_module

    calls = [0]
    real = shares_module.allocate

    def counting(*args: object, **kw: object) -> dict[str, float]:
        calls[0] += 1
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(shares_module, "allocate", counting)
    params = FairParams(capacity=1000, interval=1.0, active_window=5.0, headroom=0.0)
    fair = FairShares(lambda: params, RateLimitMetrics(CollectorRegistry()), clock=lambda: 100.0)
    for i in range(200):
        assert fair.charge(f"t{i}", 1) is not None
    assert calls[0] == shares_module.INLINE_TENANTS  # one reallocation per early arrival, none after
    assert fair.limited("t199")  # a newcomer counts as limited until its demand is measured
    late = fair.shares["t199"]
    assert 0 < late <= 1000 / (shares_module.INLINE_TENANTS + 1) + 1e-9
