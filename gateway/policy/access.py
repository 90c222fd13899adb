"""access.yaml: extra authorization rules beyond tenants.yaml (per tenant and server tool rules)."""

from __future__ import annotations

from pydantic import Field

from gateway.policy.base import Model
from gateway.policy.tenants import ToolRules


class AccessRule(Model):
    """Tool rules for the callers it matches. `tenant`, `server` and `role` are shell-style patterns (`*` = any);
    an anonymous caller has the empty tenant and role `anonymous`. `tools.mode: shadow` records, never refuses."""

    tenant: str = "*"
    server: str = "*"
    role: str = "*"
    tools: ToolRules = Field(default_factory=ToolRules)


class AccessFile(Model):
    rules: list[AccessRule] = Field(default_factory=list)
