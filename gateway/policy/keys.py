"""keys.yaml: API keys of the embedded default. Only keyed hashes are stored, never a secret."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from gateway.policy.base import Model, Rate
from gateway.policy.tenants import ToolRules

Scope = Literal["read", "write", "admin"]


class ApiKeyPolicy(Model):
    id: str
    # hex HMAC-SHA256(server secret, the whole key string `mgw_<id>_<secret>`); never the key itself
    hash: str
    tenant: str
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["read"]))
    role: str = "user"
    allow_ips: list[str] = Field(default_factory=list)
    expires_at: datetime | None = None
    revoked: bool = False
    rate_limit: Rate | None = None
    tools: ToolRules = Field(default_factory=ToolRules)
    description: str = ""
    max_concurrent_calls: int | None = None
    max_open_streams: int | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not v or not v.isalnum():
            raise ValueError("key id must be letters and digits only")
        return v

    @field_validator("hash")
    @classmethod
    def _hash(cls, v: str) -> str:
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise ValueError("hash must be 64 lowercase hex characters (HMAC-SHA256)")
        return v


class KeysFile(Model):
    keys: list[ApiKeyPolicy] = Field(default_factory=list)
