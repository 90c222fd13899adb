"""Which redirect URIs a client may register (RFC 7591 with the gateway's policy) and use (exact match only).

A redirect URI is where the authorization code goes, so it is the open-redirect and code-theft surface: no
fragment, no user info, no script or local-content scheme, plain http only to a loopback host (RFC 8252 7.3),
and at authorization time the URI must equal one the client registered, character for character.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from gateway.oauth.config import FORBIDDEN_SCHEMES, OAuthSettings

MAX_URI = 512
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]{0,63}$")


def is_loopback_http(uri: str) -> bool:
    parts = urlsplit(uri)
    if parts.scheme != "http" or parts.hostname is None:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def problem(uri: str) -> str | None:
    """Why `uri` can never be a redirect URI, or None."""
    if not isinstance(uri, str) or not uri or len(uri) > MAX_URI or not uri.isprintable() or " " in uri:
        return "redirect URI must be 1-512 printable characters"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018  # raises ValueError for a malformed port
    except ValueError:
        return "redirect URI is not a URL"
    if not _SCHEME.match(parts.scheme) or parts.scheme in FORBIDDEN_SCHEMES:
        return f"redirect URI scheme {parts.scheme!r} is not allowed"
    if parts.fragment or "#" in uri:
        return "redirect URI must not have a fragment"
    if "@" in parts.netloc:
        return "redirect URI must not carry user info"
    if parts.scheme == "http" and not is_loopback_http(uri):
        return "plain http is allowed only to a loopback host"
    if parts.scheme == "https" and not parts.hostname:
        return "redirect URI has no host"
    return None


def allowed(uri: str, settings: OAuthSettings) -> bool:
    """Whether the `allowed_redirect_uris` policy lets a client register `uri` (well-formed already)."""
    if settings.allow_loopback_redirects and is_loopback_http(uri):
        return True
    for pattern in settings.allowed_redirect_uris:
        if pattern.endswith("*"):
            if uri.startswith(pattern[:-1]):
                return True
        elif uri == pattern:
            return True
    return False
