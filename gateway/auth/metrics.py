"""Identity and access metrics. Labels are bounded: credential method, a fixed set of reasons, server names
from policy. Never a key id, subject or tenant."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

AUTHN_REASONS = frozenset(
    {
        "ok",
        "missing_credentials",
        "bad_scheme",
        "malformed_authorization",
        "malformed_credential",
        "credential_not_accepted",
        "unknown_key",
        "key_revoked",
        "key_expired",
        "key_ip_not_allowed",
        "key_store_unavailable",
        "malformed_token",
        "alg_not_allowed",
        "unknown_kid",
        "token_expired",
        "token_not_yet_valid",
        "wrong_audience",
        "wrong_issuer",
        "missing_claim",
        "bad_signature",
        "invalid_token",
        "credential_expired",
    }
)


class AuthMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.authn = Counter(
            "mcp_gateway_authn_total",
            "Authentication decisions by credential method and result (ok or the refusal reason)",
            ["method", "result"],
            registry=registry,
        )
        self.authz_denied = Counter(
            "mcp_gateway_authz_denied_total",
            "Authorization refusals by server and reason",
            ["server", "reason"],
            registry=registry,
        )
        self.authz_shadow = Counter(
            "mcp_gateway_authz_shadow_total",
            "Shadow-mode authorization rules that would have refused, by server",
            ["server"],
            registry=registry,
        )
        self.jwks_fetches = Counter(
            "mcp_gateway_jwks_fetch_total", "JWKS fetches by result (ok, error)", ["result"], registry=registry
        )
        self.key_lookups = Counter(
            "mcp_gateway_apikey_store_lookups_total",
            "PostgreSQL key store lookups by result (hit = served from cache, miss = queried, error)",
            ["result"],
            registry=registry,
        )
        self.usage_flushes = Counter(
            "mcp_gateway_apikey_usage_flush_total",
            "Batched writes of API key usage counters by result (ok, error)",
            ["result"],
            registry=registry,
        )
        self._authn_children: dict[tuple[str, str], Counter] = {}

    def authn_result(self, method: str, result: str) -> None:
        if result not in AUTHN_REASONS:
            result = "other"
        key = (method, result)
        child = self._authn_children.get(key)
        if child is None:
            child = self.authn.labels(method, result)
            self._authn_children[key] = child
        child.inc()
