"""The front door's pure parts (gateway/net/frontdoor.py): the body deadline rule and the per-peer connection count."""

from __future__ import annotations

import pytest

from gateway.net.frontdoor import FrontDoor, ReadLimits

pytestmark = pytest.mark.unit


def test_body_deadline_is_the_pause_limit_or_the_rate_whichever_comes_first() -> None:
    limits = ReadLimits(head_seconds=10, body_seconds=10, body_min_rate=1000)
    # nothing received: the allowance (which is also the longest pause)
    assert limits.body_deadline(100.0, 100.0, 0) == 110.0
    # 50 kB received by t=105: the rate would allow until t=160, but a pause may not exceed 10 s
    assert limits.body_deadline(100.0, 105.0, 50_000) == 115.0
    # bytes trickling in (last at t=119) at 100 B/s: the rate rule ends it at 100 + 10 + 2000/1000
    assert limits.body_deadline(100.0, 119.0, 2_000) == 112.0
    # no rate: only the pause limit
    assert ReadLimits(10, 10, 0).body_deadline(100.0, 119.0, 2_000) == 129.0


def test_connections_are_capped_per_peer_and_released() -> None:
    door = FrontDoor(ReadLimits(10, 10, 0), max_per_peer=2)
    assert door.admit("10.0.0.1") and door.admit("10.0.0.1")
    assert not door.admit("10.0.0.1")  # a third from the same peer
    assert door.admit("10.0.0.2")  # another peer has its own count
    door.release("10.0.0.1")
    assert door.admit("10.0.0.1")
    for _ in range(2):
        door.release("10.0.0.1")
    door.release("10.0.0.2")
    assert door.open == {}  # nothing is kept for a peer without connections
    door.release("10.0.0.9")  # a peer never counted: nothing happens


def test_no_cap_and_trusted_proxies_are_not_refused() -> None:
    uncapped = FrontDoor(ReadLimits(10, 10, 0), max_per_peer=0)
    assert all(uncapped.admit("10.0.0.1") for _ in range(1000))
    assert uncapped.open == {}
    door = FrontDoor(ReadLimits(10, 10, 0), max_per_peer=1, exempt=["192.168.0.0/16"])
    assert all(door.admit("192.168.1.1") for _ in range(10))  # a proxy multiplexes many clients
    assert door.admit("10.0.0.1") and not door.admit("10.0.0.1")
