"""servers.yaml: the upstream MCP servers the gateway routes to, one route `/mcp/{name}` each."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gateway.policy.auth import RouteAuth, UpstreamAuth
from gateway.policy.base import Model, NonNegInt, PositiveFloat, PositiveInt
from gateway.policy.resilience import BreakerPolicy, HealthPolicy, PoolPolicy, RetryPolicy
from gateway.policy.stdio import STDIO_INSTANCE, StdioPolicy

Transport = Literal["streamable-http", "sse", "websocket", "stdio"]

# The pseudo-server the admin API authenticates and audits as. Names starting with `_` belong to the gateway: a
# server called `_admin` would hand the admin API its own route settings (JWTs, anonymous callers) and mix its
# audit records with the admin API's.
ADMIN_SERVER = "_admin"
# Names starting with `.` collide with URL path segments (`/mcp/..`, `/mcp/.`, `.well-known`): clients and
# proxies normalise them away, so such a route would answer for another path.
RESERVED_PREFIXES = ("_", ".")


class UpstreamSpec(Model):
    url: str
    weight: PositiveInt = 1

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://", "ws://", "wss://")) and v != STDIO_INSTANCE:
            raise ValueError("must be an http(s):// or ws(s):// URL")
        return v


class TimeoutPolicy(Model):
    """Connect, first-byte and idle timeouts. There is deliberately no total timeout: it would cut SSE streams."""

    connect: PositiveFloat = 5.0
    first_byte: PositiveFloat = 60.0
    idle: PositiveFloat = 300.0


class ServerPolicy(Model):
    # required unless `transport: stdio`, whose one instance is its process (`stdio`)
    upstreams: list[UpstreamSpec] = Field(default_factory=list)
    transport: Transport = "streamable-http"
    # transport: stdio only: the program the gateway runs (gateway/policy/stdio.py)
    stdio: StdioPolicy | None = None
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
    # which refusals go out as HTTP 200 + the JSON-RPC error (gateway/transports/refusal_status.py): `auto` those of
    # a JSON-RPC message in the protocol eras and transports whose official clients break on non-2xx, `true` every
    # refusal except 400/404/405/413, `false` none
    compat_status_200: bool | Literal["auto"] = "auto"
    max_body_bytes: PositiveInt | None = None
    # record tools/call arguments (sanitized) in the audit trail
    audit_arguments: bool = False
    # weight of tools/call per tool name, charged against rate limits (default 1)
    tool_costs: dict[str, NonNegInt] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _stdio_instance(cls, data: Any) -> Any:
        # a stdio server's one instance is its process: breakers, health and session bindings key on STDIO_INSTANCE
        if isinstance(data, dict) and data.get("transport") == "stdio":
            if data.get("upstreams"):
                raise ValueError("a stdio server has no `upstreams`: its process is given by `stdio`")
            data = {**data, "upstreams": [{"url": STDIO_INSTANCE}]}
        return data

    @model_validator(mode="after")
    def _transport_fields(self) -> ServerPolicy:
        if self.transport == "stdio":
            if self.stdio is None:
                raise ValueError("transport: stdio needs a `stdio` block (command, args, ...)")
            if self.upstream_auth is not None:
                raise ValueError("upstream_auth is for network upstreams; give a stdio server secrets in stdio.env")
            return self
        if self.stdio is not None:
            raise ValueError("`stdio` is only for transport: stdio")
        if not self.upstreams:
            raise ValueError("upstreams: at least one upstream is required")
        if any(u.url == STDIO_INSTANCE for u in self.upstreams):
            raise ValueError(f"{STDIO_INSTANCE} names a stdio process: use transport: stdio")
        return self


class ServersFile(Model):
    servers: dict[str, ServerPolicy] = Field(default_factory=dict)
    # an empty (or truncated) servers.yaml would remove every route on reload: refused unless said on purpose
    allow_empty: bool = False

    @field_validator("servers")
    @classmethod
    def _names(cls, v: dict[str, ServerPolicy]) -> dict[str, ServerPolicy]:
        for name in v:
            if not name or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(f"server name {name!r} may use only letters, digits, '-', '_' and '.'")
            if name.startswith(RESERVED_PREFIXES):
                raise ValueError(
                    f"server name {name!r} is reserved: names starting with '_' belong to the gateway "
                    f"({ADMIN_SERVER!r} is the admin API) and names starting with '.' collide with URL paths"
                )
        return v
