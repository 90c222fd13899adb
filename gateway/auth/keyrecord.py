"""An API key as the request path sees it: compiled once (networks parsed, expiry as a number, tool rules)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

from gateway.auth.principal import Principal
from gateway.auth.tools import ToolMatcher
from gateway.errors import Forbidden, Unauthenticated
from gateway.policy.keys import ApiKeyPolicy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def compile_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


@lru_cache(maxsize=4096)
def parse_ip(text: str) -> IPAddress | None:
    """The client address as an IP; IPv4-mapped IPv6 (`::ffff:a.b.c.d`) counts as the IPv4 address."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    hash: str
    tenant: str
    scopes: frozenset[str]
    role: str
    networks: tuple[IPNetwork, ...]  # empty: any address
    expires_at: float | None  # epoch seconds
    revoked: bool
    tools: ToolMatcher | None
    source: str  # "policy" or "postgres"
    # who a request with this key is: made once per record from its fields (immutable, so requests share it)
    principal: Principal = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        principal = Principal(
            tenant=self.tenant,
            subject=f"key:{self.id}",
            role=self.role,
            scopes=self.scopes,
            key_id=self.id,
            method="api_key",
            tools=self.tools,
            expires_at=self.expires_at,
            networks=self.networks,
            key_hash=self.hash,
            key_source=self.source,
        )
        object.__setattr__(self, "principal", principal)  # frozen: set once, here

    def ip_allowed(self, client_ip: str) -> bool:
        if not self.networks:
            return True
        ip = parse_ip(client_ip)
        if ip is None:
            return False
        return any(ip.version == net.version and ip in net for net in self.networks)

    def admit(self, client_ip: str) -> Principal:
        """The principal of a key whose secret has been verified, after the checks on the key itself (revoked,
        expired, allowed networks); raises the refusal otherwise. Shared by authn and `mcp-gateway explain`."""
        if self.revoked:
            raise Unauthenticated("API key revoked", reason="key_revoked")
        if self.expires_at is not None and self.expires_at <= time.time():
            raise Unauthenticated("API key expired", reason="key_expired")
        if not self.ip_allowed(client_ip):
            # the key is genuine but not usable from here: a refusal of who, not a failure to prove it
            raise Forbidden("API key not allowed from this address", reason="key_ip_not_allowed")
        return self.principal


def tool_matcher(allow: Sequence[str], deny: Sequence[str], shadow: bool) -> ToolMatcher | None:
    if not allow and not deny:
        return None
    return ToolMatcher(allow, deny, shadow=shadow, source="key")


def from_policy(key: ApiKeyPolicy) -> KeyRecord:
    return KeyRecord(
        id=key.id,
        hash=key.hash,
        tenant=key.tenant,
        scopes=frozenset(key.scopes),
        role=key.role,
        networks=compile_networks(key.allow_ips),
        expires_at=epoch_seconds(key.expires_at),
        revoked=key.revoked,
        tools=tool_matcher(key.tools.allow, key.tools.deny, key.tools.mode == "shadow"),
        source="policy",
    )


def epoch_seconds(when: datetime | None) -> float | None:
    if when is None:
        return None
    if when.tzinfo is None:
        # a naive timestamp in keys.yaml means UTC, whatever the host's zone
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
