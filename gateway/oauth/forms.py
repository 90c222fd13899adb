"""Cross-site request forgery defence of the sign-in and consent forms, and the ticket that carries a signed-in
user from the sign-in form to the consent form.

The browser holds a random nonce in a `SameSite=Strict`, `HttpOnly` cookie; each form carries
HMAC(form secret, nonce). A page of another site can make the browser POST, but it can neither read the cookie nor
compute the HMAC, and with `SameSite=Strict` the cookie is not even sent. The ticket is the checked request plus
the key id, signed, short-lived and bound to the same nonce, so it is worthless in another browser; the API key
itself is never put in a page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import orjson

COOKIE = "mgw_oauth_csrf"
MAX_TICKET = 8 * 1024


def _mac(secret: bytes, purpose: str, data: bytes) -> str:
    return hmac.new(secret, purpose.encode() + b"\x00" + data, hashlib.sha256).hexdigest()


def csrf_token(secret: bytes, nonce: str) -> str:
    return _mac(secret, "csrf", nonce.encode())


def csrf_ok(secret: bytes, nonce: str | None, token: str | None) -> bool:
    if not nonce or not token or len(nonce) > 128 or len(token) != 64:
        return False
    return hmac.compare_digest(csrf_token(secret, nonce), token)


def make_ticket(secret: bytes, nonce: str, payload: dict[str, Any], lifetime: float) -> str:
    body = orjson.dumps({**payload, "exp": time.time() + lifetime, "nonce": hashlib.sha256(nonce.encode()).hexdigest()})
    raw = base64.urlsafe_b64encode(body).decode()
    return f"{raw}.{_mac(secret, 'ticket', raw.encode())}"


def read_ticket(secret: bytes, nonce: str | None, ticket: str | None) -> dict[str, Any] | None:
    """The ticket's payload when it is ours, fresh and bound to this browser's nonce; else None."""
    if not nonce or not ticket or len(ticket) > MAX_TICKET or "." not in ticket:
        return None
    raw, _, mac = ticket.rpartition(".")
    if not hmac.compare_digest(_mac(secret, "ticket", raw.encode()), mac):
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(raw.encode()))
    except (ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("exp"), float | int):
        return None
    if payload["exp"] < time.time():
        return None
    if not hmac.compare_digest(str(payload.get("nonce")), hashlib.sha256(nonce.encode()).hexdigest()):
        return None
    return payload
