"""Who is calling: the result of authentication, the only source of tenant identity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ipaddress

    from gateway.auth.tools import ToolMatcher

ANONYMOUS_ROLE = "anonymous"


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str | None
    subject: str
    role: str = "user"
    scopes: frozenset[str] = field(default_factory=frozenset)
    key_id: str | None = None
    # "api_key", "jwt" or "anonymous"
    method: str = "api_key"
    # the JWT issuer; part of the session binding so equal `sub`s of two issuers never share a session
    issuer: str | None = None
    # the credential's own tool allow/deny rules (API keys), compiled when the key was loaded
    tools: ToolMatcher | None = field(default=None, compare=False)
    # when the credential stops being valid (epoch seconds, leeway included); authz re-checks it for each message
    # of a long-lived connection (WebSocket), which authenticates only once, at the upgrade
    expires_at: float | None = field(default=None, compare=False)
    # the networks an API key may be used from (empty: any); the admin API never lets a key mint a wider one
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default=(), compare=False)
    # an API key's stored hash and where it came from ("policy" or "postgres"): a long-lived connection (WebSocket)
    # authenticates once, so each of its messages re-checks that the key is still the one verified and not revoked
    key_hash: str | None = field(default=None, compare=False, repr=False)
    key_source: str | None = field(default=None, compare=False)

    @property
    def is_anonymous(self) -> bool:
        return self.method == "anonymous"

    @property
    def binding_id(self) -> str:
        """What a session is bound to: stable for one caller, distinct between callers."""
        if self.method == "jwt":
            return f"jwt:{self.issuer}:{self.tenant}:{self.subject}"
        return f"{self.method}:{self.tenant}:{self.key_id or self.subject}"


def anonymous_principal(scopes: frozenset[str] = frozenset({"read"}), client_ip: str = "") -> Principal:
    """Anonymous callers cannot be told apart by a credential; their sessions are bound to the client address
    instead, so one anonymous caller cannot use a session id another one started."""
    subject = f"anonymous@{client_ip}" if client_ip else "anonymous"
    return Principal(tenant=None, subject=subject, role=ANONYMOUS_ROLE, scopes=scopes, method="anonymous")
