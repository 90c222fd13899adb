"""tenants.yaml: tenants, their fair-share weights, reservations, owned servers and tool rules."""

from __future__ import annotations

from pydantic import Field

from gateway.policy.base import Mode, Model, NonNegFloat, PositiveFloat, PositiveInt


class ToolRules(Model):
    """Tool allow/deny lists (`*` wildcards allowed). Deny wins; an empty allow list allows every tool."""

    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)
    mode: Mode = "enforce"


class TenantPolicy(Model):
    weight: PositiveFloat = 1.0
    # a floor of the global rate reserved for this tenant, in requests per second
    reserved_rps: NonNegFloat = 0.0
    servers: list[str] = Field(default_factory=list)  # servers the tenant owns
    tools: ToolRules = Field(default_factory=ToolRules)
    max_concurrent_calls: PositiveInt | None = None
    max_open_streams: PositiveInt | None = None


class TenantsFile(Model):
    tenants: dict[str, TenantPolicy] = Field(default_factory=dict)
