"""servers.yaml: the upstream MCP servers the gateway routes to, one route `/mcp/{name}` each."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gateway.policy.auth import RouteAuth, UpstreamAuth
from gateway.policy.base import Model, NonNegInt, PositiveFloat, PositiveInt
from gateway.policy.resilience import BreakerPolicy, HealthPolicy, PoolPolicy, RetryPolicy

Transport = Literal["streamable-http", "sse", "websocket"]


class UpstreamSpec(Model):
    url: str
    weight: PositiveInt = 1

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError("must be an http(s):// or ws(s):// URL")
        return v


class TimeoutPolicy(Model):
    """Connect, first-byte and idle timeouts. There is deliberately no total timeout: it would cut SSE streams."""

    connect: PositiveFloat = 5.0
    first_byte: PositiveFloat = 60.0
    idle: PositiveFloat = 300.0


class ServerPolicy(Model):
    upstreams: list[UpstreamSpec] = Field(min_length=1)
    transport: Transport = "streamable-http"
    # which protocol eras the route serves; "modern" = 2026-07-28 stateless only (GET/DELETE -> 405)
    eras: Literal["both", "legacy", "modern"] = "both"
    description: str = ""
    # the tenant that owns the server; `shared_with` lists other tenants ("*" = every tenant)
    owner: str | None = None
    shared_with: list[str] = Field(default_factory=list)
    auth: RouteAuth = Field(default_factory=RouteAuth)
    upstream_auth: UpstreamAuth | None = None
    timeouts: TimeoutPolicy = Field(default_factory=TimeoutPolicy)
    breaker: BreakerPolicy = Field(default_factory=BreakerPolicy)
    health: HealthPolicy = Field(default_factory=HealthPolicy)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    pool: PoolPolicy = Field(default_factory=PoolPolicy)
    load_balancing: Literal["round-robin", "least-outstanding"] = "round-robin"
    # answer gateway refusals with HTTP 200 + the JSON-RPC error, for clients that hang on non-2xx
    compat_status_200: bool = False
    max_body_bytes: PositiveInt | None = None
    # record tools/call arguments (sanitized) in the audit trail
    audit_arguments: bool = False
    # weight of tools/call per tool name, charged against rate limits (default 1)
    tool_costs: dict[str, NonNegInt] = Field(default_factory=dict)


class ServersFile(Model):
    servers: dict[str, ServerPolicy] = Field(default_factory=dict)

    @field_validator("servers")
    @classmethod
    def _names(cls, v: dict[str, ServerPolicy]) -> dict[str, ServerPolicy]:
        for name in v:
            if not name or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(f"server name {name!r} may use only letters, digits, '-', '_' and '.'")
        return v
