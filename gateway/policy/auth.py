"""Route authentication (which credentials a route accepts) and the gateway's own upstream credential."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gateway.policy.base import Model, NonNegFloat, SecretRef

Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]


_DEFAULT_ALGS: tuple[Algorithm, ...] = ("RS256", "ES256", "EdDSA")


class JwtClaims(Model):
    """Which claims carry the tenant, subject, role and scopes."""

    tenant: str = "tenant"
    subject: str = "sub"
    role: str = "role"
    scopes: str = "scope"


class JwtPolicy(Model):
    issuer: str
    # expected `aud`; default is the route's own URL (`<public_url>/mcp/<server>`)
    audience: str | None = None
    algorithms: list[Algorithm] = Field(default_factory=lambda: list(_DEFAULT_ALGS), min_length=1)
    jwks_url: str | None = None
    hs_secret: SecretRef | None = None
    leeway_seconds: NonNegFloat = 30.0
    claims: JwtClaims = Field(default_factory=JwtClaims)
    # advertise RFC 9728 protected-resource metadata pointing at these authorization servers
    authorization_servers: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _key_source(self) -> JwtPolicy:
        has_hs = any(a.startswith("HS") for a in self.algorithms)
        has_asym = any(not a.startswith("HS") for a in self.algorithms)
        if has_hs and has_asym:
            # mixing families is how HS/RS confusion happens: one family per route
            raise ValueError("algorithms must be all HMAC (HS*) or all asymmetric, not both")
        if has_hs and self.hs_secret is None:
            raise ValueError("HS* algorithms need hs_secret")
        if has_asym and self.jwks_url is None:
            raise ValueError("asymmetric algorithms need jwks_url")
        return self


AuthMethod = Literal["api_key", "jwt"]


class RouteAuth(Model):
    methods: list[AuthMethod] = Field(default_factory=lambda: list[AuthMethod](["api_key"]))
    anonymous: bool = False
    jwt: JwtPolicy | None = None

    @model_validator(mode="after")
    def _jwt_needs_policy(self) -> RouteAuth:
        if "jwt" in self.methods and self.jwt is None:
            raise ValueError("methods includes 'jwt' but no 'jwt' settings are given")
        return self


class UpstreamAuth(Model):
    """The gateway's own credential for an upstream (the client's is always stripped)."""

    type: Literal["bearer", "header"] = "bearer"
    header: str = "Authorization"
    secret: SecretRef
