"""Weighted max-min fairness (water filling) of one capacity among tenants. Pure functions, no I/O.

Every tenant i has a demand d_i (offered load, refused requests included), a weight w_i, a reserved floor r_i and
an optional ceiling c_i. The allocation is a_i = clamp(lambda * w_i, lo_i, hi_i) with one water level lambda chosen
so the a_i add up to the capacity:

* congested (the wants add up to more than the capacity): lo_i = floor, hi_i = want_i, so a tenant asking less
  than its weighted level gets what it asks and the rest is split by weight among the others;
* not congested: lo_i = want_i, hi_i = ceiling, so every tenant gets what it asks and the idle capacity is lent by
  weight (work-conserving: nothing is held back for tenants that do not use it).

want_i = max(r_i, min(c_i, d_i * (1 + headroom))): the headroom keeps a satisfied tenant's normal jitter from being
refused; the global tier still holds the hard ceiling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TenantDemand:
    demand: float  # offered rate (cost units per second)
    weight: float = 1.0
    reserved: float = 0.0
    ceiling: float = math.inf


def _fill(capacity: float, weights: list[float], lo: list[float], hi: list[float]) -> list[float]:
    """clamp(lambda * w_i, lo_i, hi_i) summing to `capacity` (requires sum(lo) <= capacity)."""
    if sum(hi) <= capacity:
        return list(hi)
    finite = [h / w for h, w in zip(hi, weights, strict=True) if math.isfinite(h)]
    top = max([capacity / min(weights), *finite, *(lo_i / w for lo_i, w in zip(lo, weights, strict=True))])
    bottom = 0.0

    def total(level: float) -> float:
        return sum(min(max(level * w, a), b) for w, a, b in zip(weights, lo, hi, strict=True))

    for _ in range(100):
        mid = (bottom + top) / 2
        if total(mid) > capacity:
            top = mid
        else:
            bottom = mid
        if top - bottom <= 1e-12 * max(1.0, top):
            break
    return [min(max(bottom * w, a), b) for w, a, b in zip(weights, lo, hi, strict=True)]


def allocate(capacity: float, tenants: Mapping[str, TenantDemand], headroom: float = 0.0) -> dict[str, float]:
    """Each tenant's share of `capacity` (same unit as the demands)."""
    if not tenants or capacity <= 0:
        return {name: 0.0 for name in tenants}
    names = list(tenants)
    specs = [tenants[n] for n in names]
    weights = [max(s.weight, 1e-9) for s in specs]
    floors = [min(s.reserved, s.ceiling) for s in specs]
    total_floor = sum(floors)
    if total_floor >= capacity:
        # over-reserved: the reservations themselves are scaled down to fit
        scale = capacity / total_floor
        return {n: f * scale for n, f in zip(names, floors, strict=True)}
    wants = [max(f, min(s.ceiling, s.demand * (1.0 + headroom))) for f, s in zip(floors, specs, strict=True)]
    if sum(wants) > capacity:
        shares = _fill(capacity, weights, floors, wants)
    else:
        shares = _fill(capacity, weights, wants, [s.ceiling for s in specs])
    return dict(zip(names, shares, strict=True))


def max_min_target(capacity: float, tenants: Mapping[str, TenantDemand]) -> dict[str, float]:
    """The ideal served rates (no headroom, capped at demand): what a perfectly fair limiter would serve."""
    names = list(tenants)
    specs = [tenants[n] for n in names]
    weights = [max(s.weight, 1e-9) for s in specs]
    wants = [min(s.demand, s.ceiling) for s in specs]
    floors = [min(s.reserved, w) for s, w in zip(specs, wants, strict=True)]
    if sum(floors) >= capacity:
        scale = capacity / sum(floors)
        return {n: f * scale for n, f in zip(names, floors, strict=True)}
    return dict(zip(names, _fill(capacity, weights, floors, wants), strict=True))


def jain_index(values: list[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one value takes everything."""
    if not values:
        return 1.0
    s = sum(values)
    sq = sum(v * v for v in values)
    return 1.0 if sq == 0 else (s * s) / (len(values) * sq)
