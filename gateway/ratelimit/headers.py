"""The IETF RateLimit headers (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy` lists every enforced
tier as `"<name>";q=<quota>;w=<window seconds>`; `RateLimit` reports the tier closest to refusing as
`"<name>";r=<remaining>;t=<seconds until the quota is whole again>`."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gateway.ratelimit.compiled import window_seconds
from gateway.ratelimit.gcra import TierCheck, TierResult

# `RateLimit-Policy` entries by (name, burst, interval): a tier's entry only changes with the policy (or a tenant's
# fair share), so formatting it for every response is wasted work. Bounded: cleared when it grows past the cap.
_POLICY_ITEMS: dict[tuple[str, float, float], str] = {}
_POLICY_ITEMS_MAX = 4096


def policy_item(name: str, burst: float, interval: float) -> str:
    return f'"{name}";q={max(1, math.floor(burst))};w={window_seconds(interval, burst)}'


def policy_value(tiers: Sequence[TierCheck]) -> str:
    """The `RateLimit-Policy` value of a response whose results come from these tiers as they are (a store's results
    carry each tier's burst and interval; the in-process fallback's scaled tiers do not): "" when every tier is
    shadow, i.e. no header. Precomputed once per client plan by the rate-limit stage."""
    return ", ".join([policy_item(t.name, t.burst, t.interval) for t in tiers if not t.shadow])


def ratelimit_value(r: TierResult) -> str:
    """The `RateLimit` value of an admitted request whose tightest enforced tier is `r`."""
    return f'"{r.name}";r={r.remaining};t={max(0, math.ceil(r.reset - 1e-9))}'


def _policy_item(r: TierResult) -> str:
    key = (r.name, r.burst, r.interval)
    item = _POLICY_ITEMS.get(key)
    if item is None:
        item = policy_item(r.name, r.burst, r.interval)
        if len(_POLICY_ITEMS) >= _POLICY_ITEMS_MAX:
            _POLICY_ITEMS.clear()
        _POLICY_ITEMS[key] = item
    return item


def policy_header(results: Sequence[TierResult]) -> str:
    return ", ".join([_policy_item(r) for r in results if not r.shadow])


def tightest(results: Sequence[TierResult]) -> TierResult | None:
    best: TierResult | None = None
    for r in results:
        if r.shadow:
            continue
        if best is None or r.remaining < best.remaining or (r.remaining == best.remaining and r.reset > best.reset):
            # (remaining, -reset) ordering without building two tuples per tier
            best = r
    return best


def ratelimit_header(results: Sequence[TierResult], refused: TierResult | None = None) -> str | None:
    r = refused or tightest(results)
    if r is None:
        return None
    if refused is not None:
        return f'"{r.name}";r=0;t={max(1, math.ceil(r.retry_after - 1e-9))}'
    return ratelimit_value(r)


def limit_headers(results: Sequence[TierResult], refused: TierResult | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    add_limit_headers(out, results, refused)
    return out


def add_limit_headers(out: dict[str, str], results: Sequence[TierResult], refused: TierResult | None = None) -> None:
    """`out.update(limit_headers(results, refused))` in one pass over the tiers and without the intermediate dict:
    the rate-limit stage runs it for every admitted request."""
    items: list[str] = []
    best: TierResult | None = None
    for r in results:
        if r.shadow:
            continue
        item = _POLICY_ITEMS.get((r.name, r.burst, r.interval))
        items.append(_policy_item(r) if item is None else item)
        # tightest()
        if best is None or r.remaining < best.remaining or (r.remaining == best.remaining and r.reset > best.reset):
            best = r
    if items:
        out["RateLimit-Policy"] = ", ".join(items)
    if refused is not None:
        out["RateLimit"] = f'"{refused.name}";r=0;t={max(1, math.ceil(refused.retry_after - 1e-9))}'
    elif best is not None:
        out["RateLimit"] = ratelimit_value(best)
