"""GCRA semantics on the in-process store with a driven clock (the Redis script is held to the same answers by
tests/integration/test_ratelimit_redis.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ratelimit.gcra import SlotCheck, TierCheck, decide, refusing_tier
from gateway.ratelimit.store import MemoryStore

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def tier(name: str = "global", rate: float = 10.0, burst: float = 5, cost: int = 1, shadow: bool = False) -> TierCheck:
    return TierCheck(name, f"k:{name}", 1.0 / rate, burst, cost, shadow)


def test_idle_key_admits_burst_then_rate_over_ten_seconds() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    rate, burst, window = 10.0, 5, 10.0
    admitted = 0
    start = clock.t
    # a request every millisecond for ten seconds: far more than the limit
    while clock.t - start <= window:
        if store.decide_now([tier(rate=rate, burst=burst)], [], 0).allowed:
            admitted += 1
        clock.t += 0.001
    expected = burst + rate * window
    assert abs(admitted - expected) <= 1, admitted


def test_refusal_reports_wait_and_remaining() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    t = tier(rate=2.0, burst=2)
    assert store.decide_now([t], [], 0).tiers[0].remaining == 1
    assert store.decide_now([t], [], 0).tiers[0].remaining == 0
    v = store.decide_now([t], [], 0)
    assert not v.allowed
    assert v.refused_by is not None and v.refused_by.name == "global"
    assert v.refused_by.retry_after == pytest.approx(0.5)
    clock.t += 0.5
    assert store.decide_now([t], [], 0).allowed


def test_a_refusal_by_one_tier_consumes_nothing_from_the_others() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    big = tier("global", rate=1.0, burst=10)
    small = tier("key", rate=1.0, burst=1)
    assert store.decide_now([big, small], [], 0).allowed
    for _ in range(5):
        v = store.decide_now([big, small], [], 0)
        assert not v.allowed and v.refused_by is not None and v.refused_by.name == "key"
    # only the one admitted request was charged to the big tier: 9 of its 10 remain
    alone = store.decide_now([big], [], 0)
    assert alone.allowed and alone.tiers[0].remaining == 8


def test_shadow_tier_never_refuses_but_reports() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    shadow = tier("user", rate=1.0, burst=1, shadow=True)
    enforced = tier("global", rate=100.0, burst=100)
    results = [store.decide_now([enforced, shadow], [], 0) for _ in range(3)]
    assert all(v.allowed for v in results)
    assert [len(v.shadow_refusals) for v in results] == [0, 1, 1]
    assert results[2].refused_by is None


def test_cost_is_charged_in_units() -> None:
    store = MemoryStore(Clock())
    heavy = tier(rate=1.0, burst=10, cost=4)
    assert [store.decide_now([heavy], [], 0).allowed for _ in range(3)] == [True, True, False]


def test_refusing_tier_is_the_longest_wait() -> None:
    # a must wait ~5 s, b ~50 s: waiting for b satisfies both
    _, outcomes = decide([tier("a", rate=1.0, burst=1), tier("b", rate=0.1, burst=1)], [1005.0, 1050.0], 1000.0)
    worst = refusing_tier([o.result for o in outcomes])
    assert worst is not None and worst.name == "b"
    assert worst.retry_after == pytest.approx(50)


def test_slots_cap_release_and_expiry() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    cap = [SlotCheck("tenant_calls", "c:t:calls:acme", 2)]
    a = store.decide_now([], cap, slot_ttl=10)
    b = store.decide_now([], cap, slot_ttl=10)
    assert a.allowed and b.allowed
    c = store.decide_now([], cap, slot_ttl=10)
    assert not c.allowed and c.slot_refused is not None and c.slot_refused.name == "tenant_calls"
    assert a.hold is not None
    store.release_now(a.hold)
    assert store.decide_now([], cap, slot_ttl=10).allowed
    # nobody releases: the slots expire after their TTL (a crashed holder cannot leak them)
    clock.t += 10.01
    assert store.in_use("c:t:calls:acme") == 0
    assert store.decide_now([], cap, slot_ttl=10).allowed


def test_slot_refusal_consumes_no_rate() -> None:
    store = MemoryStore(Clock())
    t = tier(rate=1.0, burst=2)
    cap = [SlotCheck("key_calls", "c:k", 1)]
    assert store.decide_now([t], cap, 10).allowed
    assert not store.decide_now([t], cap, 10).allowed  # slot full
    assert store.decide_now([t], [], 10).allowed  # the second unit of burst is still there


def test_sweep_forgets_idle_keys() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    for i in range(50):
        store.decide_now([TierCheck("ip", f"ip{i}", 0.1, 3, 1)], [], 0)
    assert len(store) == 50
    clock.t += 1
    store.sweep()
    assert len(store) == 0


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.5, 50),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=300),
)
def test_never_more_than_burst_plus_rate_times_window(rate: float, burst: int, gaps: list[float]) -> None:
    clock = Clock()
    store = MemoryStore(clock)
    t = tier(rate=rate, burst=burst)
    times: list[float] = []
    for gap in gaps:
        clock.t += gap
        if store.decide_now([t], [], 0).allowed:
            times.append(clock.t)
    # in any window [a, b] of admitted requests: count <= burst + rate * (b - a)
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - times[i]) + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    specs=st.lists(
        st.tuples(st.floats(0.5, 50), st.integers(1, 20), st.integers(0, 5), st.booleans()), min_size=1, max_size=4
    ),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=60),
)
def test_store_answers_exactly_as_decide(specs: list[tuple[float, int, int, bool]], gaps: list[float]) -> None:
    # the store inlines gcra.decide for speed; it must give the same results and write the same TATs
    clock = Clock()
    store = MemoryStore(clock)
    tats: dict[str, float] = {}
    checks = [TierCheck(f"t{i}", f"k{i}", 1.0 / r, b, c, s) for i, (r, b, c, s) in enumerate(specs)]
    for gap in gaps:
        clock.t += gap
        admitted, outcomes = decide(checks, [tats.get(c.key) for c in checks], clock.t)
        verdict = store.decide_now(checks, [], 0)
        assert verdict.allowed == admitted
        assert verdict.tiers == [o.result for o in outcomes]
        assert verdict.refused_by == (None if admitted else refusing_tier(verdict.tiers))
        if admitted:
            for c, o in zip(checks, outcomes, strict=True):
                if o.new_tat is not None:
                    tats[c.key] = o.new_tat
        assert store._tats == tats


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.5, 50),
    burst=st.integers(1, 20),
    shadow=st.booleans(),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=60),
)
def test_single_tier_path_answers_as_decide_now(rate: float, burst: int, shadow: bool, gaps: list[float]) -> None:
    # the per-IP guard's allocation-free path must decide and write exactly what decide_now does
    clock = Clock()
    full, one = MemoryStore(clock), MemoryStore(clock)
    check = TierCheck("ip", "1.2.3.4", 1.0 / rate, burst, 1, shadow)
    for gap in gaps:
        clock.t += gap
        result = full.decide_now([check], [], 0).tiers[0]
        got = one.refusal_one("ip", "1.2.3.4", check.interval, check.burst, 1, shadow)
        assert got == (None if result.allowed else result)
        assert one._tats == full._tats
