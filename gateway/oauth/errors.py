"""OAuth endpoint refusals: RFC 6749 section 5.2 / RFC 7591 section 3.2.2 error bodies (what OAuth clients, the
official SDKs included, parse), with the gateway's stable `reason` as an extension member, never cached."""

from __future__ import annotations

import orjson
from aiohttp import web


class OAuthError(Exception):
    def __init__(
        self, error: str, description: str, *, reason: str, status: int = 400, retry_after: int | None = None
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.reason = reason
        self.status = status
        self.retry_after = retry_after

    def response(self) -> web.Response:
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.status == 401:
            # RFC 6749 5.2: a failed client authentication answers with a challenge
            headers["WWW-Authenticate"] = 'Basic realm="mcp-gateway-oauth"'
        body = {"error": self.error, "error_description": self.description, "reason": self.reason}
        return web.Response(
            status=self.status, body=orjson.dumps(body), content_type="application/json", headers=headers
        )


def invalid_grant(description: str, reason: str) -> OAuthError:
    return OAuthError("invalid_grant", description, reason=reason)


def invalid_request(description: str, reason: str = "invalid_request") -> OAuthError:
    return OAuthError("invalid_request", description, reason=reason)
