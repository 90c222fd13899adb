"""A small per-address limit for the authorization server's endpoints (registration, token, sign-in): a token
bucket per (endpoint, client address), refilled continuously, in a bounded LRU. Per process: with N workers or
replicas an address gets at most N times the budget, which still bounds a flood. The MCP routes' tiered limiter
(gateway/ratelimit/) keys on principals these endpoints do not have yet."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.clientip import address_group

MAX_TRACKED = 10_000


class AddressLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(per_minute)
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, at)

    def take(self, address: str) -> float:
        """0.0 when the request may go on; else the seconds until it may."""
        now = self._clock()
        address = address_group(address)
        tokens, at = self._buckets.pop(address, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._rate
        self._buckets[address] = (tokens, now)
        if len(self._buckets) > MAX_TRACKED:
            # the least recently seen address goes: a flood of addresses forgets the quiet ones first
            self._buckets.popitem(last=False)
        return wait


def retry_after(wait: float) -> int:
    return max(1, math.ceil(wait))
