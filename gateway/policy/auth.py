"""Route authentication (which credentials a route accepts) and the gateway's own upstream credential."""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from gateway.policy.base import Model, NonNegFloat, PositiveFloat, SecretRef

Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]
Scope = Literal["read", "write", "admin"]

_DEFAULT_ALGS: tuple[Algorithm, ...] = ("RS256", "ES256", "EdDSA")


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_or_loopback(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.hostname) and (parts.scheme == "https" or (parts.scheme == "http" and _loopback(parts.hostname)))


class JwtClaims(Model):
    """Which claims carry the tenant, subject, role and scopes (dotted paths reach into nested objects)."""

    tenant: str = "tenant"
    subject: str = "sub"
    role: str = "role"
    # a space-separated string (OAuth `scope`) or a list (`scp`)
    scopes: str = "scope"


class JwtPolicy(Model):
    issuer: str
    # expected `aud`; default is the route's own URL (`<public_url>/mcp/<server>`)
    audience: str | None = None
    # one family per route (all HS* or all asymmetric): mixing them is how HS/RS confusion happens
    algorithms: list[Algorithm] = Field(default_factory=lambda: list(_DEFAULT_ALGS), min_length=1)
    jwks_url: str | None = None
    hs_secret: SecretRef | None = None
    leeway_seconds: NonNegFloat = 30.0
    claims: JwtClaims = Field(default_factory=JwtClaims)
    # advertise RFC 9728 protected-resource metadata pointing at these authorization servers (an "OAuth route")
    authorization_servers: list[str] = Field(default_factory=list)
    # token scope -> gateway scopes (e.g. `mcp:tools: [read, write]`); empty: token scopes named read/write/admin
    # are taken as they are
    scope_map: dict[str, list[Scope]] = Field(default_factory=dict)
    # role when the token has no role claim
    default_role: str = "user"
    # how long fetched JWKS keys are used before a background refresh
    jwks_cache_seconds: PositiveFloat = 300.0
    # at most one JWKS fetch per this many seconds for tokens with an unknown `kid` (a flood of made-up kids must
    # not turn into a flood of fetches)
    jwks_min_refresh_seconds: NonNegFloat = 30.0
    jwks_timeout_seconds: PositiveFloat = 5.0

    @field_validator("jwks_url")
    @classmethod
    def _jwks_https(cls, v: str | None) -> str | None:
        # SSRF and key substitution: keys come over TLS, plain HTTP only from loopback (development, tests)
        if v is not None and not _tls_or_loopback(v):
            raise ValueError("jwks_url must be https:// (http:// only for a loopback host)")
        return v

    @field_validator("authorization_servers")
    @classmethod
    def _as_https(cls, v: list[str]) -> list[str]:
        # clients fetch these (RFC 8414 metadata); OAuth 2.1 wants TLS for every authorization server
        for url in v:
            if not _tls_or_loopback(url):
                raise ValueError(f"authorization server {url!r} must be https:// (http:// only for loopback)")
        return v

    @model_validator(mode="after")
    def _key_source(self) -> JwtPolicy:
        has_hs = any(a.startswith("HS") for a in self.algorithms)
        has_asym = any(not a.startswith("HS") for a in self.algorithms)
        if has_hs and has_asym:
            raise ValueError("algorithms must be all HMAC (HS*) or all asymmetric, not both")
        if has_hs and self.hs_secret is None:
            raise ValueError("HS* algorithms need hs_secret")
        if has_asym and self.jwks_url is None:
            raise ValueError("asymmetric algorithms need jwks_url")
        return self

    @property
    def symmetric(self) -> bool:
        return self.algorithms[0].startswith("HS")


# `oauth`: tokens of the gateway's built-in authorization server (config.yaml `oauth:`, gateway/oauth/)
AuthMethod = Literal["api_key", "jwt", "oauth"]


class RouteAuth(Model):
    methods: list[AuthMethod] = Field(default_factory=lambda: list[AuthMethod](["api_key"]), min_length=1)
    # requests without any credential get the `anonymous` principal (tier `anonymous`) instead of 401
    anonymous: bool = False
    anonymous_scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["read"]))
    jwt: JwtPolicy | None = None
    # the upstream is trusted: a tool it marks `readOnlyHint: true` (in the last tools/list answer this gateway
    # relayed) may be called with the `read` scope. Hints of untrusted servers are ignored (MCP: untrusted).
    trust_tool_annotations: bool = False

    @model_validator(mode="after")
    def _jwt_needs_policy(self) -> RouteAuth:
        if "jwt" in self.methods and self.jwt is None:
            raise ValueError("methods includes 'jwt' but no 'jwt' settings are given")
        return self

    @property
    def oauth(self) -> bool:
        """An OAuth resource-server route: JWTs accepted and authorization servers advertised (RFC 9728)."""
        return "jwt" in self.methods and self.jwt is not None and bool(self.jwt.authorization_servers)

    @property
    def builtin_oauth(self) -> bool:
        """The route takes tokens of the gateway's built-in authorization server (when it is on)."""
        return "oauth" in self.methods


class UpstreamAuth(Model):
    """The gateway's own credential for an upstream (the client's is always stripped)."""

    type: Literal["bearer", "header"] = "bearer"
    header: str = "Authorization"
    secret: SecretRef
