"""The rate-limit stage's precompiled paths against the general ones they stand for: `MemoryStore.decide_lean`
against `decide_now`, plan-built RateLimit headers against `add_limit_headers`, and the filter's in-process fast
path against its general path (the same store decisions through `backend.decide`), request by request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gateway.auth.principal import Principal, anonymous_principal
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.filters.ratelimit import RateLimitFilter, TierPlan
from gateway.jsonrpc import parse_message
from gateway.policy.model import PolicySet
from gateway.policy.snapshot import Snapshot
from gateway.ratelimit.fairness import allocate
from gateway.ratelimit.gcra import SlotCheck, TierCheck, Verdict
from gateway.ratelimit.headers import add_limit_headers, policy_header, policy_value, ratelimit_value, tightest
from gateway.ratelimit.metrics import RateLimitMetrics
from gateway.ratelimit.service import RateLimiter
from gateway.ratelimit.shares import FairParams, FairShares
from gateway.ratelimit.store import MemoryStore, PreparedTiers

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


_tier = st.tuples(
    st.sampled_from([0.001, 0.01, 0.1, 0.37, 1.0, 60.0]),  # interval
    st.sampled_from([1.0, 2.0, 2.5, 3.0, 10.0, 1e9]),  # burst
    st.integers(0, 3),  # cost
    st.booleans(),  # shadow
)


def _checks(spec: Sequence[tuple[float, float, int, bool]]) -> list[TierCheck]:
    names = ("global", "tenant", "user", "key", "ip")
    return [
        TierCheck(names[i], f"k{i}", interval, burst, cost, shadow, i < 2)
        for i, (interval, burst, cost, shadow) in enumerate(spec)
    ]


@settings(max_examples=300, deadline=None)
@given(
    spec=st.lists(_tier, min_size=1, max_size=5),
    steps=st.lists(st.sampled_from([0.0, 0.0005, 0.01, 0.1, 0.5, 2.0, 100.0]), min_size=1, max_size=25),
)
def test_decide_lean_decides_and_writes_what_decide_now_does(
    spec: list[tuple[float, float, int, bool]], steps: list[float]
) -> None:
    tiers = _checks(spec)
    clock = Clock()
    general, lean = MemoryStore(clock), MemoryStore(clock)
    for dt in steps:
        clock.now += dt
        want = general.decide_now(tiers, [], 0.0)
        got = lean.decide_lean(PreparedTiers(tiers))
        if isinstance(got, Verdict):
            assert got == want
        else:
            # only when every tier admitted, and then it is the tier the RateLimit header reports
            assert want.allowed and all(r.allowed for r in want.tiers)
            assert got == tightest(want.tiers)
            expected: dict[str, str] = {}
            add_limit_headers(expected, want.tiers)
            built: dict[str, str] = {}
            if policy_value(tiers):
                built["RateLimit-Policy"] = policy_value(tiers)
            if got is not None:
                built["RateLimit"] = ratelimit_value(got)
            assert list(built.items()) == list(expected.items())
        assert lean._tats == general._tats


@settings(max_examples=100, deadline=None)
@given(spec=st.lists(_tier, min_size=1, max_size=5))
def test_plan_policy_value_is_the_results_policy_header(spec: list[tuple[float, float, int, bool]]) -> None:
    tiers = _checks(spec)
    plan = TierPlan(tiers, None)
    results = MemoryStore(Clock()).decide_now(tiers, [], 0.0).tiers
    assert plan.policy == policy_header(results)


class _ThroughDecide:
    """Stands in the Redis slot of a backend so the filter takes its general path (`await backend.decide`) while the
    decisions are the same in-process store's (verdicts say "memory")."""

    name = "redis"

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def decide(self, tiers: Sequence[TierCheck], slots: Sequence[SlotCheck], slot_ttl: float) -> Verdict:
        return self.store.decide_now(tiers, slots, slot_ttl)


_LOOSE = {"rate": 1000, "per": "second"}


def _snapshot(limits: dict[str, Any]) -> Snapshot:
    policy = PolicySet.model_validate(
        {
            "servers": {"servers": {"s": {"upstreams": [{"url": "http://x"}], "tool_costs": {"heavy": 3}}}},
            "tenants": {"tenants": {"acme": {"weight": 2}, "beta": {}}},
            "keys": {
                "keys": [
                    {"id": "k1", "hash": "0" * 64, "tenant": "acme", "rate_limit": limits.pop("k1", _LOOSE)},
                    {"id": "k2", "hash": "1" * 64, "tenant": "beta", "rate_limit": limits.pop("k2", _LOOSE)},
                ]
            },
            "limits": limits,
        }
    )
    return Snapshot.build(policy, "v1", Path("."), time.time())


def _limiter(snap: Snapshot, clock: Clock) -> RateLimiter:
    limiter = RateLimiter(RateLimitMetrics(CollectorRegistry()), None, "mgw:", lambda: snap)
    limiter.backend.memory = MemoryStore(clock)
    return limiter


def _outcome(flt: RateLimitFilter, ctx: RequestContext) -> tuple[Any, ...]:
    try:
        asyncio.run(flt(ctx))
        raised: Any = None
    except GatewayError as exc:
        raised = (type(exc).__name__, str(exc), exc.retry_after, exc.headers, exc.data)
    return raised, ctx.response_headers, ctx.notes, ctx.shadow, ctx.cost, len(ctx.releases)


def _samples(limiter: RateLimiter) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for metric in (limiter.metrics.decisions, limiter.metrics.refusals):
        for family in metric.collect():
            out.extend((s.name, s.labels, s.value) for s in family.samples if not s.name.endswith("_created"))
    return sorted(out, key=repr)


_CALLERS = [
    Principal("acme", "alice", role="user"),
    Principal("acme", "root", role="admin", key_id="k1"),
    Principal("beta", "bob", role="user", key_id="k2"),
    Principal("beta", "nobody", role="guest"),
    anonymous_principal(client_ip="10.0.0.9"),
    None,
]
_BODIES = [
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "heavy"}},
    {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    [
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "x"}},
        {"jsonrpc": "2.0", "id": 4, "result": {}},
    ],
]
_TIGHT = {"rate": 3, "per": "second", "burst": 2}
_SHADOW = {"rate": 3, "per": "second", "burst": 2, "mode": "shadow"}
_LOOSE_TIERS = {"admin": _LOOSE, "user": _LOOSE, "anonymous": _LOOSE}


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"global": _TIGHT, "tiers": _LOOSE_TIERS}, {("global", "enforce")}),
        ({"global": _SHADOW, "tiers": _LOOSE_TIERS}, {("global", "shadow")}),
        ({"global": {"rate": 10, "per": "second"}, "tiers": _LOOSE_TIERS}, {("tenant", "enforce")}),
        ({"tenant_default": _TIGHT, "tiers": _LOOSE_TIERS}, {("tenant", "enforce")}),
        ({"global": _LOOSE, "tenant_default": _SHADOW, "tiers": _LOOSE_TIERS}, {("tenant", "shadow")}),
        (
            {"global": _LOOSE, "tiers": {"user": _TIGHT, "anonymous": _SHADOW}},
            {("user", "enforce"), ("user", "shadow")},
        ),
        ({"tiers": {}, "k1": _TIGHT, "k2": _SHADOW}, {("key", "enforce"), ("key", "shadow")}),
        ({"global": _LOOSE, "tenant_default": _LOOSE, "tiers": _LOOSE_TIERS}, set()),
    ],
)
def test_filter_fast_path_answers_like_the_general_path(limits: dict[str, Any], expected: set[tuple[str, str]]) -> None:
    snap = _snapshot(dict(limits))
    clock = Clock()
    fast_limiter, general_limiter = _limiter(snap, clock), _limiter(snap, clock)
    general_limiter.backend.redis = cast(Any, _ThroughDecide(general_limiter.backend.memory))
    fast = RateLimitFilter(fast_limiter.compiled(snap), fast_limiter)
    general = RateLimitFilter(general_limiter.compiled(snap), general_limiter)
    for i in range(400):
        clock.now += (0.0, 0.01, 0.05, 0.3)[i % 4] * (1 + i % 3)
        if i % 100 == 99:
            # new fair shares mid-run, the same on both sides
            for limiter in (fast_limiter, general_limiter):
                limiter.fair.recompute({"acme": 30.0, "beta": 5.0}, limiter.compiled(snap).fair, time.time())
        principal = _CALLERS[i % len(_CALLERS)]
        body = _BODIES[(i // len(_CALLERS)) % len(_BODIES)]
        outcomes = []
        for flt in (fast, general):
            ctx = RequestContext("r", snap, "s", snap.servers["s"], f"10.0.0.{i % 3}", "streamable-http", "POST")
            ctx.message = parse_message(orjson.dumps(body), "2025-03-26")
            ctx.principal = principal
            outcomes.append(_outcome(flt, ctx))
        assert outcomes[0] == outcomes[1], i
    assert fast_limiter.backend.memory._tats == general_limiter.backend.memory._tats
    samples = _samples(fast_limiter)
    assert samples == _samples(general_limiter)
    counted = {(labels["tier"], labels["mode"]) for name, labels, v in samples if "refusals" in name and v}
    assert expected <= counted  # at least these tiers refused (a tight global also starves a tenant's share)
    if not expected:
        assert not counted  # loose limits everywhere: nothing was refused
    assert any(labels["result"] == "allowed" and v for name, labels, v in samples if "decisions" in name)


def test_fair_charge_counts_and_a_newcomer_is_allotted_its_share_at_once() -> None:
    params = FairParams(capacity=100.0, interval=1.0, active_window=5.0, headroom=0.2, weights={"acme": 2.0})
    current: list[FairParams | None] = [None]
    fs = FairShares(lambda: current[0], RateLimitMetrics(CollectorRegistry()), clock=lambda: 5.0)

    assert fs.charge("acme", 1) is None  # no fairness yet, but the cost is counted
    assert fs._counts == {"acme": 1}
    current[0] = params
    fs.recompute({}, None, 0.0)  # fairness turned off by a reload, then on again
    # start-up: each arrival reallocates at once, demand unknown = all of it, by weight (acme 2, beta 1)
    assert fs.charge("acme", 2) == pytest.approx(100.0)
    assert fs.limited("acme")
    assert fs.charge("beta", 1) == pytest.approx(100.0 / 3)
    assert fs.charge("acme", 1) == pytest.approx(200.0 / 3)  # acme's share moved when beta arrived
    assert fs._counts == {"acme": 4, "beta": 1}
    fs.recompute({"acme": 50.0, "beta": 80.0}, params, 10.0)
    measured = allocate(100.0, {"acme": params.demand("acme", 50.0), "beta": params.demand("beta", 80.0)}, 0.2)
    assert fs.charge("acme", 1) == pytest.approx(measured["acme"])
    assert not fs.limited("acme") and fs.limited("beta")  # acme wants 60 and gets it, beta wants 96
    # a newcomer beside measured tenants: allotted now, the others' shares shrink in the same step
    got = fs.charge("gamma", 1)
    expected = allocate(
        100.0,
        {
            "acme": params.demand("acme", 50.0),
            "beta": params.demand("beta", 80.0),
            "gamma": params.demand("gamma", 100.0),
        },
        0.2,
    )
    assert got == pytest.approx(expected["gamma"]) and fs.shares == pytest.approx(expected)
    assert sum(fs.shares.values()) == pytest.approx(100.0)
