"""The IETF RateLimit headers (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy` lists every enforced
tier as `"<name>";q=<quota>;w=<window seconds>`; `RateLimit` reports the tier closest to refusing as
`"<name>";r=<remaining>;t=<seconds until the quota is whole again>`."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gateway.ratelimit.compiled import window_seconds
from gateway.ratelimit.gcra import TierResult

# `RateLimit-Policy` entries by (name, burst, interval): a tier's entry only changes with the policy (or a tenant's
# fair share), so formatting it for every response is wasted work. Bounded: cleared when it grows past the cap.
_POLICY_ITEMS: dict[tuple[str, float, float], str] = {}
_POLICY_ITEMS_MAX = 4096


def _policy_item(r: TierResult) -> str:
    key = (r.name, r.burst, r.interval)
    item = _POLICY_ITEMS.get(key)
    if item is None:
        item = f'"{r.name}";q={max(1, math.floor(r.burst))};w={window_seconds(r.interval, r.burst)}'
        if len(_POLICY_ITEMS) >= _POLICY_ITEMS_MAX:
            _POLICY_ITEMS.clear()
        _POLICY_ITEMS[key] = item
    return item


def policy_header(results: Sequence[TierResult]) -> str:
    return ", ".join([_policy_item(r) for r in results if not r.shadow])


def _tightest(results: Sequence[TierResult]) -> TierResult | None:
    best: TierResult | None = None
    for r in results:
        if r.shadow:
            continue
        if best is None or r.remaining < best.remaining or (r.remaining == best.remaining and r.reset > best.reset):
            # (remaining, -reset) ordering without building two tuples per tier
            best = r
    return best


def ratelimit_header(results: Sequence[TierResult], refused: TierResult | None = None) -> str | None:
    r = refused or _tightest(results)
    if r is None:
        return None
    if refused is not None:
        return f'"{r.name}";r=0;t={max(1, math.ceil(r.retry_after - 1e-9))}'
    return f'"{r.name}";r={r.remaining};t={max(0, math.ceil(r.reset - 1e-9))}'


def limit_headers(results: Sequence[TierResult], refused: TierResult | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    policy = policy_header(results)
    if policy:
        out["RateLimit-Policy"] = policy
    value = ratelimit_header(results, refused)
    if value is not None:
        out["RateLimit"] = value
    return out
