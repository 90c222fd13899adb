"""GCRA (generic cell rate algorithm): the decision every store makes, as pure functions over theoretical arrival
times (TATs). The Redis Lua script (lua/decide.lua) is a line-by-line port of `decide`;
tests/integration/test_ratelimit_redis.py runs both on the same sequences and times and compares every answer.

A tier with rate r and burst B has emission interval T = 1/r and tolerance tau = B*T. A request of cost c is
admitted when max(TAT, now) + c*T - now <= tau, and then TAT becomes max(TAT, now) + c*T. From an idle start this
admits B at once and then r per second: over a window W, B + r*W (+-1).

Several tiers are decided together: the request is admitted only if every enforced tier admits it, and only then is
anything written (a refusal by one tier consumes nothing from the others). A shadow tier is evaluated and its state
advanced exactly as if it were enforced (so its verdicts mean what they would in enforcement), but it never refuses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

# one microsecond of tolerance on every comparison: float times are inexact, and a request that lands exactly on
# the boundary (cost == burst on an idle tier, say) must be admitted by both stores alike
EPS = 1e-6


@dataclass(frozen=True, slots=True)
class TierCheck:
    """One tier applied to one request."""

    name: str  # "global", "tenant", "user", "key", "ip": what `data.limit` and the RateLimit headers name
    key: str  # store key (the store adds its prefix)
    interval: float  # emission interval T, seconds per unit of cost
    burst: float  # units admitted at once from idle
    cost: int
    shadow: bool = False
    # global and tenant rates are divided among replicas when a replica falls back to its in-process store
    shared: bool = False

    @property
    def rate(self) -> float:
        return 1.0 / self.interval


@dataclass(frozen=True, slots=True)
class SlotCheck:
    """A concurrency cap: one slot in `key` is held until released (or until it expires unrefreshed)."""

    name: str  # "tenant_calls", "key_calls", "tenant_streams", "key_streams"
    key: str
    cap: int


class TierResult(NamedTuple):
    """One tier's answer. Immutable like the other records here, but a NamedTuple: the store builds one per tier per
    request, and a NamedTuple is built in about a third of the time of a frozen dataclass."""

    name: str
    allowed: bool
    remaining: int  # units still admissible now
    retry_after: float  # seconds until this request would be admitted (0 when allowed)
    reset: float  # seconds until the tier is back to its full burst
    burst: float
    interval: float
    shadow: bool


@dataclass(slots=True)
class SlotHold:
    """Slots taken by one admitted request; handed back to the store on release."""

    member: str
    keys: tuple[str, ...]
    store: str = "memory"  # which store holds them ("redis" or "memory")


@dataclass(slots=True)
class Verdict:
    allowed: bool
    tiers: list[TierResult] = field(default_factory=list)
    refused_by: TierResult | None = None  # the enforced tier that refused (the one with the longest wait)
    slot_refused: SlotCheck | None = None
    hold: SlotHold | None = None
    backend: str = "memory"  # "redis", "memory", "fallback" or "open"

    @property
    def shadow_refusals(self) -> list[TierResult]:
        return [t for t in self.tiers if t.shadow and not t.allowed]


@dataclass(frozen=True, slots=True)
class TierOutcome:
    result: TierResult
    new_tat: float | None  # the TAT to store when the request is admitted; None = leave the tier untouched


def evaluate(check: TierCheck, tat: float | None, now: float) -> TierOutcome:
    """One tier, without side effects."""
    t = check.interval
    tau = check.burst * t
    base = now if tat is None or tat < now else tat
    new = base + check.cost * t
    diff = new - now
    if diff <= tau + EPS:
        remaining = math.floor((tau - diff + EPS) / t)
        return TierOutcome(TierResult(check.name, True, remaining, 0.0, diff, check.burst, t, check.shadow), new)
    remaining = max(0, math.floor((tau - (base - now) + EPS) / t))
    return TierOutcome(
        TierResult(check.name, False, remaining, diff - tau, base - now, check.burst, t, check.shadow), None
    )


def decide(checks: Sequence[TierCheck], tats: Sequence[float | None], now: float) -> tuple[bool, list[TierOutcome]]:
    """All tiers at once: (admitted, per-tier outcomes). Write `new_tat`s only when admitted."""
    outcomes = [evaluate(c, tat, now) for c, tat in zip(checks, tats, strict=True)]
    admitted = all(o.result.allowed or o.result.shadow for o in outcomes)
    return admitted, outcomes


def refusing_tier(results: Sequence[TierResult]) -> TierResult | None:
    """The enforced tier that refused with the longest wait: waiting that long satisfies every refusing tier."""
    worst: TierResult | None = None
    for r in results:
        if not r.allowed and not r.shadow and (worst is None or r.retry_after > worst.retry_after):
            worst = r
    return worst
