"""API keys: `mgw_<id>_<secret>`. Only HMAC-SHA256(server secret, whole key) is stored; lookup by id,
constant-time comparison."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX = "mgw_"


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key_id: str
    raw: str


def parse_key(raw: str) -> ParsedKey | None:
    """Split a presented key; None when it does not have the gateway's shape."""
    if not raw.startswith(PREFIX) or len(raw) > 256:
        return None
    rest = raw[len(PREFIX) :]
    key_id, sep, secret = rest.partition("_")
    if not sep or not key_id.isalnum() or len(secret) < 16:
        return None
    return ParsedKey(key_id, raw)


def hash_key(server_secret: bytes, raw: str) -> str:
    return hmac.new(server_secret, raw.encode(), hashlib.sha256).hexdigest()


def verify_key(server_secret: bytes, raw: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(server_secret, raw), stored_hash)


def generate_key(key_id: str | None = None) -> tuple[str, str]:
    """A new (key id, full key). The secret part is 32 random bytes, url-safe."""
    kid = key_id or secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return kid, f"{PREFIX}{kid}_{secret}"
