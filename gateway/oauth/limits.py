"""A small per-address limit for the authorization server's endpoints (registration, token, sign-in): a token
bucket per (endpoint, client address), refilled continuously, in a bounded LRU. Per process: with N workers or
replicas an address gets at most N times the budget, which still bounds a flood. The MCP routes' tiered limiter
(gateway/ratelimit/) keys on principals these endpoints do not have yet."""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable

MAX_TRACKED = 10_000
# one IPv6 subscriber usually holds a whole /64 (SLAAC, privacy addresses): counted per address, it would have
# 2**64 budgets (red team: a registration flood from one host)
IPV6_PREFIX = 64


def address_group(address: str) -> str:
    """What one budget is kept for: an IPv4 address, or the /64 an IPv6 address is in (IPv4-mapped IPv6 as IPv4);
    anything that does not parse as an address (a unix socket's peer) as itself."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


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
