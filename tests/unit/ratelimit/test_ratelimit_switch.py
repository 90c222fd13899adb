"""The in-process store while a Redis-backed replica is in fallback: buckets start empty at the switch (no burst is
admitted by the switch itself), and every tier it decided is remembered for sealing Redis on the way back."""

from __future__ import annotations

import pytest

from gateway.ratelimit.gcra import TierCheck
from gateway.ratelimit.store import MemoryStore

pytestmark = pytest.mark.unit

RATE, BURST = 10.0, 10.0
TIER = TierCheck("tenant", "t:acme", 1.0 / RATE, BURST, 1, shared=True)


def admitted(store: MemoryStore, now: list[float], start: float, seconds: float, step: float = 0.001) -> int:
    n = 0
    now[0] = start
    while now[0] < start + seconds:
        n += store.decide_now([TIER], [], 0).allowed
        now[0] += step
    return n


def test_a_switch_to_fallback_admits_the_rate_but_no_burst() -> None:
    now = [100.0]
    store = MemoryStore(clock=lambda: now[0])
    # the same store as an embedded limiter: a fresh bucket admits its burst, then the rate
    assert admitted(store, now, 100.0, 1.0) == pytest.approx(BURST + RATE, abs=1)
    store.begin_fallback()  # at t = 101: an earlier state is forgotten, every bucket is empty now
    got = admitted(store, now, 101.0, 1.0)
    assert RATE - 1 <= got <= RATE  # the rate only: Redis may have admitted the whole burst just before
    # what sealing Redis carries over: the bucket, still empty after a second at the rate, full in tau = 1 s
    assert store.fallback_state() == {"t:acme": pytest.approx(BURST / RATE, abs=2 / RATE)}
    # later, the bucket refills as usual; a full bucket has nothing to carry over
    assert admitted(store, now, 104.0, 1.0) == pytest.approx(BURST + RATE, abs=1)
    now[0] = 110.0
    assert store.fallback_state() == {}
    store.end_fallback()


def test_refused_tiers_are_remembered_for_sealing_too() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    store.begin_fallback()
    assert not store.decide_now([TIER], [], 0).allowed  # empty at the switch
    assert store.fallback_state() == {"t:acme": pytest.approx(BURST / RATE)}


def test_the_state_to_carry_over_stays_bounded_by_the_sweep() -> None:
    """Only buckets that are not full are carried over, so the state is the live TATs the sweep bounds, not a list of
    every key ever decided in fallback (one per client address: 100,000 made every probe time out)."""
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0], sweep_every=64)
    store.begin_fallback()
    for i in range(10_000):
        now[0] = i * 0.01
        store.decide_now([TierCheck("ip", f"ip:{i}", 0.1, 1, 1)], [], 0)
    assert len(store.fallback_state()) <= 20  # keys decided within the last tau (0.1 s), not 10,000
