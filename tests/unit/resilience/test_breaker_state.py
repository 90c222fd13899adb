"""The breaker state machine on its own: trips, open-time backoff, half-open probes, generations (no I/O)."""

from __future__ import annotations

import pytest

from gateway.policy.resilience import BreakerPolicy
from gateway.resilience.state import CircuitBreaker, State, Transition, is_failure, open_period

pytestmark = pytest.mark.unit


def make(**kw: object) -> tuple[CircuitBreaker, list[Transition]]:
    seen: list[Transition] = []
    policy = BreakerPolicy.model_validate(kw)
    return CircuitBreaker("srv|http://a", policy, seen.append), seen


def fail(br: CircuitBreaker, now: float, n: int = 1, slow: bool = False) -> None:
    for _ in range(n):
        adm = br.admit(now)
        assert adm.allowed
        br.record(adm.gen, adm.probe, True, slow, now)


def ok(br: CircuitBreaker, now: float, n: int = 1, slow: bool = False) -> None:
    for _ in range(n):
        adm = br.admit(now)
        assert adm.allowed
        br.record(adm.gen, adm.probe, False, slow, now)


def test_failure_classification() -> None:
    p = BreakerPolicy()
    assert is_failure(p, None, "connect")
    assert is_failure(p, None, "timeout")
    assert is_failure(p, None, "reset")
    assert is_failure(p, 500, None)
    assert is_failure(p, 503, None)
    assert not is_failure(p, 200, None)  # a JSON-RPC error inside a 200 is the server working
    assert not is_failure(p, 404, None)
    assert not is_failure(p, 429, None)
    explicit = BreakerPolicy(failure_statuses=[502, 503])
    assert is_failure(explicit, 503, None)
    assert not is_failure(explicit, 500, None)


def test_consecutive_failures_trip_before_min_calls() -> None:
    br, seen = make(consecutive_failures=3, min_calls=50, window=100)
    fail(br, 0.0, 2)
    assert br.state is State.CLOSED
    fail(br, 0.0)
    assert br.state is State.OPEN
    assert seen[-1].reason == "consecutive_failures"
    adm = br.admit(0.1)
    assert not adm.allowed and 0 < adm.retry_after <= 5.0


def test_a_success_resets_the_consecutive_count() -> None:
    br, _ = make(consecutive_failures=3, min_calls=50, window=100)
    fail(br, 0.0, 2)
    ok(br, 0.0)
    fail(br, 0.0, 2)
    assert br.state is State.CLOSED


def test_failure_rate_needs_min_calls() -> None:
    br, seen = make(consecutive_failures=100, min_calls=6, window=10, failure_rate=0.5)
    ok(br, 0.0)
    fail(br, 0.0)
    ok(br, 0.0)
    fail(br, 0.0)
    ok(br, 0.0)
    assert br.state is State.CLOSED  # 2/5 and below min_calls
    fail(br, 0.0)  # 3/6 = 0.5
    assert br.state is State.OPEN
    assert seen[-1].reason == "failure_rate"


def test_sliding_window_forgets_old_calls() -> None:
    br, _ = make(consecutive_failures=100, min_calls=4, window=4, failure_rate=0.75)
    fail(br, 0.0, 2)
    ok(br, 0.0, 2)  # 2/4
    ok(br, 0.0, 2)  # the two failures slid out: 0/4
    fail(br, 0.0, 2)  # 2/4
    assert br.state is State.CLOSED
    fail(br, 0.0)  # 3/4
    assert br.state is State.OPEN


def test_slow_call_rate_trips_without_failures() -> None:
    br, seen = make(min_calls=4, window=4, slow_call_rate=0.75, failure_rate=1.0)
    ok(br, 0.0, 2, slow=True)
    ok(br, 0.0, 1)
    assert br.state is State.CLOSED
    ok(br, 0.0, 1, slow=True)
    assert br.state is State.OPEN
    assert seen[-1].reason == "slow_call_rate"


def test_open_time_grows_exponentially_up_to_the_cap() -> None:
    p = BreakerPolicy(open_seconds=1, backoff_multiplier=2, max_open_seconds=5)
    assert [open_period(p, n) for n in (1, 2, 3, 4, 10, 10_000)] == [1, 2, 4, 5, 5, 5]
    br, seen = make(consecutive_failures=1, open_seconds=1, backoff_multiplier=2, max_open_seconds=5)
    fail(br, 0.0)
    assert seen[-1].open_seconds == 1
    # probe fails -> reopened for twice as long
    adm = br.admit(1.0)
    assert adm.allowed and adm.probe and br.state is State.HALF_OPEN
    br.record(adm.gen, True, True, False, 1.0)
    assert br.state is State.OPEN and seen[-1].open_seconds == 2 and seen[-1].reason == "probe_failed"
    assert not br.admit(2.9).allowed
    adm = br.admit(3.0)
    br.record(adm.gen, True, True, False, 3.0)
    assert seen[-1].open_seconds == 4
    adm = br.admit(7.0)
    br.record(adm.gen, True, True, False, 7.0)
    assert seen[-1].open_seconds == 5  # capped


def test_half_open_admits_exactly_n_probes_and_closes_after_n_successes() -> None:
    br, seen = make(consecutive_failures=1, open_seconds=1, half_open_probes=3)
    fail(br, 0.0)
    admitted = [br.admit(1.5) for _ in range(10)]
    probes = [a for a in admitted if a.allowed]
    assert len(probes) == 3 and all(a.probe for a in probes)
    assert all(not a.allowed and a.retry_after > 0 for a in admitted if not a.allowed)
    for i, a in enumerate(probes):
        br.record(a.gen, True, False, False, 1.6)
        assert br.state is (State.CLOSED if i == 2 else State.HALF_OPEN)
    assert seen[-1].reason == "probes_succeeded"
    assert br.trips == 0
    # closed again: the next trip starts from the base open time
    fail(br, 2.0)
    assert seen[-1].open_seconds == 1


def test_a_released_probe_slot_can_be_used_again() -> None:
    br, _ = make(consecutive_failures=1, open_seconds=1, half_open_probes=1)
    fail(br, 0.0)
    a = br.admit(1.0)
    assert a.allowed and a.probe
    assert not br.admit(1.0).allowed
    br.release_probe(a.gen)
    b = br.admit(1.0)
    assert b.allowed and b.probe


def test_lost_probes_start_a_new_round_after_the_probe_timeout() -> None:
    br, seen = make(consecutive_failures=1, open_seconds=1, half_open_probes=1, probe_timeout_seconds=10)
    fail(br, 0.0)
    assert br.admit(1.0).allowed
    assert not br.admit(5.0).allowed
    again = br.admit(11.5)
    assert again.allowed and again.probe and seen[-1].reason == "probe_timeout"


def test_outcomes_of_an_older_generation_are_ignored() -> None:
    br, _ = make(consecutive_failures=2)
    slow_call = br.admit(0.0)  # admitted while closed, answers after the trip
    fail(br, 0.0, 2)
    assert br.state is State.OPEN
    probe = br.admit(10.0)
    assert probe.probe
    # the stale success must not count as the probe's
    br.record(slow_call.gen, False, False, False, 10.0)
    assert br.state is State.HALF_OPEN
    br.record(probe.gen, True, False, False, 10.0)
    assert br.state is State.CLOSED


def test_four_xx_answers_never_trip() -> None:
    br, _ = make(consecutive_failures=2, min_calls=2, window=2)
    p = br.policy
    for status in (400, 401, 403, 404, 429) * 4:
        adm = br.admit(0.0)
        br.record(adm.gen, False, is_failure(p, status, None), False, 0.0)
    assert br.state is State.CLOSED


def test_adopting_a_newer_remote_state_and_ignoring_an_older_one() -> None:
    br, seen = make()
    assert br.adopt(State.OPEN, 5, 2.0, 1, now=100.0)
    assert br.state is State.OPEN and br.gen == 5
    assert not br.admit(101.0).allowed
    assert seen[-1].new is State.OPEN
    assert not br.adopt(State.CLOSED, 4, 0.0, 0, now=101.0)
    assert br.state is State.OPEN
    assert br.adopt(State.CLOSED, 6, 0.0, 0, now=101.0)
    assert br.admit(101.0).allowed


def test_health_trip_and_expedite() -> None:
    br, seen = make(open_seconds=30)
    br.trip("health_check", 0.0)
    assert br.state is State.OPEN and seen[-1].reason == "health_check"
    assert not br.admit(1.0).allowed
    br.expedite(1.0)
    assert br.admit(1.0).probe


def test_shared_mode_asks_for_coordination_only_when_not_closed() -> None:
    br, _ = make(consecutive_failures=1, open_seconds=1)
    assert br.admit(0.0, shared=True).allowed  # closed: decided locally, nothing to coordinate
    fail(br, 0.0)
    assert not br.admit(0.5, shared=True).coordinate  # open and not over: refused locally
    assert br.admit(1.5, shared=True).coordinate


def test_policy_update_keeps_state() -> None:
    br, _ = make(consecutive_failures=3, window=10)
    fail(br, 0.0, 2)
    br.update_policy(BreakerPolicy(consecutive_failures=3, window=5))
    fail(br, 0.0)
    assert br.state is State.OPEN
