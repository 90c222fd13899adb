"""The IETF RateLimit headers (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy` lists every enforced
tier as `"<name>";q=<quota>;w=<window seconds>`; `RateLimit` reports the tier closest to refusing as
`"<name>";r=<remaining>;t=<seconds until the quota is whole again>`."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gateway.ratelimit.compiled import window_seconds
from gateway.ratelimit.gcra import TierResult


def policy_header(results: Sequence[TierResult]) -> str:
    return ", ".join(
        f'"{r.name}";q={max(1, math.floor(r.burst))};w={window_seconds(r.interval, r.burst)}'
        for r in results
        if not r.shadow
    )


def _tightest(results: Sequence[TierResult]) -> TierResult | None:
    best: TierResult | None = None
    for r in results:
        if r.shadow:
            continue
        if best is None or (r.remaining, -r.reset) < (best.remaining, -best.reset):
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
