"""Weighted max-min allocation (water filling)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ratelimit.fairness import TenantDemand, allocate, jain_index, max_min_target

pytestmark = pytest.mark.unit


def test_skewed_demand_equal_weights() -> None:
    # capacity 30, equal shares of 10: A asks 100, B 3, C 10
    shares = allocate(30, {"a": TenantDemand(100), "b": TenantDemand(3), "c": TenantDemand(10)})
    assert shares["b"] == pytest.approx(3)
    assert shares["c"] == pytest.approx(10)
    assert shares["a"] == pytest.approx(17)


def test_headroom_is_given_to_satisfied_tenants_only() -> None:
    shares = allocate(30, {"a": TenantDemand(100), "b": TenantDemand(3)}, headroom=0.2)
    assert shares["b"] == pytest.approx(3.6)
    assert shares["a"] == pytest.approx(26.4)


def test_work_conserving_when_not_congested() -> None:
    shares = allocate(30, {"a": TenantDemand(5), "b": TenantDemand(1)})
    assert sum(shares.values()) == pytest.approx(30)
    assert shares["a"] >= 5 and shares["b"] >= 1
    # idle capacity lent equally (equal weights): both get the same level above their demand
    assert shares["a"] == pytest.approx(15) and shares["b"] == pytest.approx(15)


def test_weights() -> None:
    shares = allocate(30, {"a": TenantDemand(100, weight=2), "b": TenantDemand(100, weight=1)})
    assert shares["a"] == pytest.approx(20) and shares["b"] == pytest.approx(10)


def test_reserved_floor_holds_under_pressure() -> None:
    shares = allocate(30, {"a": TenantDemand(100, weight=10), "b": TenantDemand(0.1, reserved=8)})
    assert shares["b"] == pytest.approx(8)
    assert shares["a"] == pytest.approx(22)


def test_over_reservation_is_scaled() -> None:
    shares = allocate(10, {"a": TenantDemand(100, reserved=10), "b": TenantDemand(100, reserved=30)})
    assert shares["a"] == pytest.approx(2.5) and shares["b"] == pytest.approx(7.5)


def test_ceiling_caps_a_tenant_and_frees_capacity() -> None:
    shares = allocate(30, {"a": TenantDemand(100, ceiling=5), "b": TenantDemand(100)})
    assert shares["a"] == pytest.approx(5) and shares["b"] == pytest.approx(25)


def test_jain_index() -> None:
    assert jain_index([1, 1, 1]) == pytest.approx(1)
    assert jain_index([1, 0, 0]) == pytest.approx(1 / 3)


def test_target_caps_at_demand() -> None:
    t = max_min_target(30, {"a": TenantDemand(100), "b": TenantDemand(3), "c": TenantDemand(10)})
    assert t == pytest.approx({"a": 17, "b": 3, "c": 10})


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.floats(1, 1000),
    tenants=st.dictionaries(
        st.text("abcdef", min_size=1, max_size=3),
        st.tuples(st.floats(0, 2000), st.floats(0.1, 10), st.floats(0, 50)),
        min_size=1,
        max_size=8,
    ),
)
def test_allocation_properties(capacity: float, tenants: dict[str, tuple[float, float, float]]) -> None:
    spec = {n: TenantDemand(d, w, r) for n, (d, w, r) in tenants.items()}
    shares = allocate(capacity, spec)
    total = sum(shares.values())
    # never more than the capacity, and all of it whenever any tenant is active (work-conserving)
    assert total <= capacity * (1 + 1e-6)
    assert total == pytest.approx(capacity, rel=1e-6)
    reserved = sum(min(s.reserved, math.inf) for s in spec.values())
    for n, s in spec.items():
        assert shares[n] >= 0
        if reserved <= capacity:
            assert shares[n] >= s.reserved * (1 - 1e-6)
    # max-min: a tenant that got less than it asked for got at least as much per weight as anyone else
    # who is above its floor
    for n, s in spec.items():
        want = max(s.reserved, s.demand)
        if reserved < capacity and shares[n] < want * (1 - 1e-6):
            for m, o in spec.items():
                if shares[m] > o.reserved * (1 + 1e-6) + 1e-9:
                    assert shares[n] / s.weight >= shares[m] / o.weight * (1 - 1e-4) - 1e-9
