"""The client's address. `X-Forwarded-For` is believed only when the peer is a configured trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientIpResolver:
    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._trusted: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in trusted_proxies)

    def _is_trusted(self, addr: str) -> bool:
        if not self._trusted:
            return False
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    def resolve(self, peer: str | None, forwarded_for: str | None) -> str:
        peer = peer or "0.0.0.0"
        if not forwarded_for or not self._is_trusted(peer):
            return peer
        # walk from the nearest hop outwards; the first address that is not a trusted proxy is the client
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer  # a malformed chain: trust nothing in it
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops else peer


def forwarded_for(headers: Mapping[str, str]) -> str | None:
    """Every X-Forwarded-For line of the request as one list. A proxy may add a line of its own instead of appending
    to the client's: reading only the first line took the client's own (forged) value as the chain (red team)."""
    if not isinstance(headers, CIMultiDictProxy | CIMultiDict):
        # a plain mapping (aiohttp's stand-in request for a head it could not parse) holds one line at most
        return headers.get("X-Forwarded-For")
    lines = headers.getall("X-Forwarded-For", [])
    if not lines:
        return None
    return lines[0] if len(lines) == 1 else ",".join(lines)


def address_group(peer: str) -> str:
    """What a per-address budget or cap counts (the front door's per-peer connections, the OAuth endpoints' limits):
    an IPv4 address, or an IPv6 address's /64 (a host usually holds a whole /64, so counting single IPv6 addresses
    would give an attacker with one of them 2**64 budgets); IPv4-mapped IPv6 as its IPv4 address; anything that does
    not parse (a unix socket's peer) as itself."""
    if ":" not in peer:
        return peer
    try:
        ip = ipaddress.IPv6Address(peer.split("%", 1)[0])
    except ValueError:
        return peer
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)  # an IPv4 client on a dual-stack socket: its own address
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
