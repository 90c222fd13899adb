"""The identity subsystem's runtime state, one AppKey: what the filters need besides the snapshot.

Lives outside the policy snapshot (JWKS caches, key-store caches, usage counters), so a reload keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.auth.jwks import JwksRegistry
from gateway.auth.metrics import AuthMetrics
from gateway.auth.pgkeys import PostgresKeyStore
from gateway.auth.usage import UsageCounters

if TYPE_CHECKING:
    from gateway.oauth.tokens import AccessTokens


@dataclass
class AuthState:
    hmac_secret: bytes
    public_url: str
    jwks: JwksRegistry
    usage: UsageCounters = field(default_factory=UsageCounters)
    key_store: PostgresKeyStore | None = None
    metrics: AuthMetrics | None = None
    # server -> tool -> readOnlyHint as last seen in a relayed tools/list answer (trust_tool_annotations routes)
    readonly_tools: dict[str, dict[str, bool]] = field(default_factory=dict)
    # the built-in authorization server's tokens (gateway/oauth/); None when `oauth.enabled` is false
    oauth_tokens: AccessTokens | None = None


AUTH: web.AppKey[AuthState] = web.AppKey("auth_state", AuthState)


def route_url(public_url: str, server_name: str) -> str:
    return f"{public_url.rstrip('/')}/mcp/{server_name}"


def metadata_url(public_url: str, server_name: str) -> str:
    """Where the route's RFC 9728 protected-resource metadata lives (well-known segment before the path)."""
    return f"{public_url.rstrip('/')}/.well-known/oauth-protected-resource/mcp/{server_name}"
