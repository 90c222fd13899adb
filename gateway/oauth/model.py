"""What the authorization server stores: clients, and grants (what one sign-in allowed) behind codes and refresh
tokens. Codes, refresh tokens and client secrets are stored only as SHA-256 hashes (they are 32 random bytes, so a
plain hash is enough; an HMAC like the API keys' would add nothing against guessing)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import asdict, dataclass
from typing import Any


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_fingerprint(key_hash: str) -> str:
    """Names one API key's hash without revealing it: a key deleted and re-created under the same id (another
    hash) does not inherit the old key's tokens."""
    return hashlib.sha256(b"mgw-oauth:" + key_hash.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    client_name: str
    redirect_uris: tuple[str, ...]
    # "none" (public client, PKCE only), "client_secret_post" or "client_secret_basic"
    auth_method: str
    secret_hash: str | None = None
    created_at: float = 0.0

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["redirect_uris"] = list(self.redirect_uris)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Client:
        return cls(**{**doc, "redirect_uris": tuple(doc["redirect_uris"])})


@dataclass(frozen=True, slots=True)
class Grant:
    """What the user allowed one client: the key it signed in with, the route (resource) and the scopes."""

    client_id: str
    key_id: str
    key_fp: str
    tenant: str
    role: str
    scopes: tuple[str, ...]
    resource: str
    # every refresh token descending from one sign-in shares it; reuse of a rotated one revokes them all
    family: str

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["scopes"] = list(self.scopes)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Grant:
        return cls(**{**doc, "scopes": tuple(doc["scopes"])})


@dataclass(frozen=True, slots=True)
class CodeGrant:
    grant: Grant
    redirect_uri: str
    code_challenge: str

    def to_doc(self) -> dict[str, Any]:
        return {"grant": self.grant.to_doc(), "redirect_uri": self.redirect_uri, "code_challenge": self.code_challenge}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> CodeGrant:
        return cls(Grant.from_doc(doc["grant"]), doc["redirect_uri"], doc["code_challenge"])
