"""The client address (gateway/clientip.py): X-Forwarded-For is believed only from a configured trusted proxy, and
only back to the first hop that is not one; a malformed chain is not believed at all."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.clientip import ClientIpResolver, forwarded_for

pytestmark = pytest.mark.unit

PROXIES = ClientIpResolver(["10.0.0.0/8", "fd00::/8"])


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    assert ClientIpResolver([]).resolve("203.0.113.5", "198.51.100.7") == "203.0.113.5"


def test_an_untrusted_peer_cannot_claim_another_address() -> None:
    assert PROXIES.resolve("203.0.113.5", "198.51.100.7") == "203.0.113.5"


def test_a_trusted_proxy_gives_the_client_it_saw() -> None:
    assert PROXIES.resolve("10.1.2.3", "198.51.100.7") == "198.51.100.7"


def test_the_nearest_untrusted_hop_is_the_client_not_the_leftmost_claim() -> None:
    # the client prepended a forged hop; proxies append, so the right-most untrusted entry is what a proxy saw
    assert PROXIES.resolve("10.1.2.3", "1.1.1.1, 198.51.100.7, 10.9.9.9") == "198.51.100.7"


def test_a_chain_of_trusted_proxies_only_gives_its_first_hop() -> None:
    assert PROXIES.resolve("10.1.2.3", "10.5.5.5, 10.6.6.6") == "10.5.5.5"


def test_a_malformed_hop_makes_the_whole_chain_untrusted() -> None:
    assert PROXIES.resolve("10.1.2.3", "198.51.100.7, not-an-ip") == "10.1.2.3"


@pytest.mark.parametrize("header", [None, "", " , "])
def test_an_empty_header_leaves_the_peer(header: str | None) -> None:
    assert PROXIES.resolve("10.1.2.3", header) == "10.1.2.3"


def test_ipv6_proxies_and_clients() -> None:
    assert PROXIES.resolve("fd00::1", "2001:db8::42") == "2001:db8::42"


def test_an_unknown_or_unparsable_peer_is_never_trusted() -> None:
    assert PROXIES.resolve(None, "198.51.100.7") == "0.0.0.0"
    assert PROXIES.resolve("unix-socket", "198.51.100.7") == "unix-socket"


def test_forwarded_for_joins_every_line_and_takes_plain_mappings() -> None:
    two = CIMultiDict([("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "198.51.100.1")])
    assert forwarded_for(CIMultiDictProxy(two)) == "203.0.113.7,198.51.100.1"
    assert forwarded_for(CIMultiDict([("X-Forwarded-For", "203.0.113.7")])) == "203.0.113.7"
    assert forwarded_for(CIMultiDict()) is None
    # aiohttp answers a head it could not parse with a stand-in request whose headers are a plain dict
    assert forwarded_for({"X-Forwarded-For": "192.0.2.1"}) == "192.0.2.1"
    assert forwarded_for({}) is None
