"""`oauth:` in config.yaml: the built-in authorization server's settings (static, restart to change)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from gateway.policy.base import Model, SecretRef

RegistrationPolicy = Literal["open", "allowed_redirect_uris", "preregistered"]

# schemes a redirect may never use, whatever the policy: script and local-content schemes are how an authorization
# code (or the user) ends up somewhere else than the client that asked
FORBIDDEN_SCHEMES = frozenset({"javascript", "data", "file", "vbscript", "about", "blob", "ftp", "ws", "wss"})


class PreregisteredClient(Model):
    client_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    client_name: str = Field("", max_length=128)
    redirect_uris: list[str] = Field(min_length=1, max_length=16)


class OAuthSettings(Model):
    enabled: bool = False
    # the `iss` of every token and of the RFC 8414 metadata; default: listen.public_url (MGW_PUBLIC_URL)
    issuer: str | None = None
    # PEM of the EC P-256 key that signs access tokens; default: `signing_key_path`, created on first start
    signing_key: SecretRef | None = None
    signing_key_path: str = "var/oauth-signing-key.pem"
    # access tokens are short-lived: a revoked key is refused at once anyway, a revoked grant within this time on
    # another replica (docs/identity.md)
    access_token_seconds: int = Field(300, ge=30, le=3600)
    refresh_token_seconds: int = Field(30 * 86400, ge=60, le=365 * 86400)
    code_seconds: int = Field(60, ge=10, le=600)
    # the sign-in and consent steps must be finished within this time
    sign_in_seconds: int = Field(600, ge=60, le=3600)
    registration: RegistrationPolicy = "allowed_redirect_uris"
    # for `allowed_redirect_uris`: exact URIs, or prefixes ending in `*` (the prefix must reach past the host)
    allowed_redirect_uris: list[str] = Field(
        default_factory=lambda: [
            "https://claude.ai/api/mcp/auth_callback",
            "https://claude.com/api/mcp/auth_callback",
            "https://vscode.dev/redirect",
            "cursor://anysphere.cursor-retrieval/oauth/*",
        ]
    )
    # RFC 8252 7.3: native clients listen on a loopback port chosen at run time (http://127.0.0.1:<any>/...)
    allow_loopback_redirects: bool = True
    clients: list[PreregisteredClient] = Field(default_factory=list)
    # registered clients kept at most (a registration flood must not fill memory or the table)
    max_clients: int = Field(10_000, ge=1)
    # a registered client no user has approved yet (no authorization code issued) is deleted after this long: a
    # real client registers just before it opens the sign-in page, and a flood's registrations then age out
    # instead of holding max_clients for good
    unclaimed_client_seconds: float = Field(3600.0, gt=0)
    # requests per minute and client address, each endpoint its own budget
    register_per_minute: int = Field(10, ge=1)
    token_per_minute: int = Field(60, ge=1)
    authorize_per_minute: int = Field(30, ge=1)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("issuer must be an http(s) URL without query or fragment")
        return v.rstrip("/")

    @field_validator("allowed_redirect_uris")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for uri in v:
            if uri.endswith("*"):
                head = uri[:-1]
                parts = urlsplit(head)
                # the prefix fixes scheme and host: `https://*` or `https://a.com*` (a.com.evil.net) would not
                if not parts.scheme or "/" not in head.partition("://")[2]:
                    raise ValueError(f"redirect prefix {uri!r} must include a path after the host")
        return v
