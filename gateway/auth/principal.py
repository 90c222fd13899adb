"""Who is calling: the result of authentication, the only source of tenant identity."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    @property
    def is_anonymous(self) -> bool:
        return self.method == "anonymous"

    @property
    def binding_id(self) -> str:
        """What a session is bound to: stable for one caller, distinct between callers."""
        return f"{self.method}:{self.tenant}:{self.key_id or self.subject}"


def anonymous_principal() -> Principal:
    return Principal(
        tenant=None, subject="anonymous", role=ANONYMOUS_ROLE, scopes=frozenset({"read"}), method="anonymous"
    )
