"""The gateway's error tree and the one function that renders an error response.

Every refusal anywhere in the gateway is a `GatewayError`; `render_error` turns it into the HTTP answer of
DESIGN.md section 3. Gateway codes sit outside JSON-RPC's reserved range -32768..-32000 so a client can always
tell a gateway refusal from an MCP server's own error. `reason` is a stable, documented string.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from aiohttp import web

# JSON-RPC / MCP reserved codes the gateway may legitimately emit.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
HEADER_MISMATCH = -32020  # MCP 2026-07-28

# Gateway codes (outside -32768..-32000). Documented in README "Error contract".
UNAUTHENTICATED = -31001
UPSTREAM_UNAVAILABLE = -31003
CIRCUIT_OPEN = -31004
UPSTREAM_TIMEOUT = -31005
UPSTREAM_PROTOCOL = -31006
SESSION_UNKNOWN = -31007
FORBIDDEN = -31403
RATE_LIMITED = -31029
IP_BLOCKED = -31030
CONCURRENCY_LIMITED = -31031
UNAVAILABLE = -31503


class GatewayError(Exception):
    """A refusal with everything needed to render it.

    `stage` names the chain stage that refused (for audit and metrics); `reason` is the stable machine-readable
    cause carried in `data.reason`.
    """

    status: ClassVar[int] = 500
    code: ClassVar[int] = -31500
    default_reason: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        stage: str | None = None,
        headers: Mapping[str, str] | None = None,
        data: Mapping[str, Any] | None = None,
        code: int | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.stage = stage
        self.headers: dict[str, str] = dict(headers or {})
        self.data: dict[str, Any] = dict(data or {})
        if code is not None:
            self.code = code  # type: ignore[misc]
        if status is not None:
            self.status = status  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code}, reason={self.reason!r})"


class ParseError(GatewayError):
    status = 400
    code = PARSE_ERROR
    default_reason = "parse_error"


class InvalidRequest(GatewayError):
    status = 400
    code = INVALID_REQUEST
    default_reason = "invalid_request"


class HeaderMismatch(GatewayError):
    status = 400
    code = HEADER_MISMATCH
    default_reason = "header_mismatch"


class BodyTooLarge(GatewayError):
    status = 413
    code = INVALID_REQUEST
    default_reason = "body_too_large"


class Unauthenticated(GatewayError):
    status = 401
    code = UNAUTHENTICATED
    default_reason = "unauthenticated"


class Forbidden(GatewayError):
    status = 403
    code = FORBIDDEN
    default_reason = "forbidden"


class NotFound(GatewayError):
    """Unknown route. Never used for policy refusals (MCP clients read 404 as 'session gone')."""

    status = 404
    code = METHOD_NOT_FOUND
    default_reason = "unknown_server"


class SessionNotFound(GatewayError):
    """Unknown, expired or foreign session: 404 is what tells an MCP client to re-initialize."""

    status = 404
    code = SESSION_UNKNOWN
    default_reason = "session_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    code = INVALID_REQUEST
    default_reason = "method_not_allowed"


class NotAcceptable(GatewayError):
    status = 406
    code = INVALID_REQUEST
    default_reason = "not_acceptable"


class RequestTimeout(GatewayError):
    """A request head or body that did not arrive in time (gateway/net/frontdoor.py)."""

    status = 408
    code = INVALID_REQUEST
    default_reason = "request_timeout"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = INVALID_REQUEST
    default_reason = "unsupported_media_type"


class MisdirectedRequest(GatewayError):
    """A `Host` the gateway does not answer for (DNS rebinding, gateway/hosts.py): RFC 9110 421."""

    status = 421
    code = FORBIDDEN
    default_reason = "bad_host"


class RetryableRefusal(GatewayError):
    """A refusal that tells the client when to come back (`Retry-After` and `data.retryAfterSeconds`)."""

    def __init__(self, message: str, *, retry_after: float, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = max(0.0, retry_after)
        seconds = max(1, math.ceil(self.retry_after))
        self.headers.setdefault("Retry-After", str(seconds))
        self.data.setdefault("retryAfterSeconds", seconds)


class RateLimited(RetryableRefusal):
    status = 429
    code = RATE_LIMITED
    default_reason = "rate_limited"


class IpBlocked(RetryableRefusal):
    status = 429
    code = IP_BLOCKED
    default_reason = "ip_blocked"


class ConcurrencyLimited(RetryableRefusal):
    status = 429
    code = CONCURRENCY_LIMITED
    default_reason = "concurrency_limited"


class CircuitOpen(RetryableRefusal):
    status = 503
    code = CIRCUIT_OPEN
    default_reason = "circuit_open"


class ServiceUnavailable(RetryableRefusal):
    status = 503
    code = UNAVAILABLE
    default_reason = "unavailable"


class UpstreamUnavailable(GatewayError):
    status = 502
    code = UPSTREAM_UNAVAILABLE
    default_reason = "upstream_unreachable"


class UpstreamPoolExhausted(RetryableRefusal, UpstreamUnavailable):
    """No pooled connection to the upstream came free within the pool's max wait. The request was never sent, so it
    stays retryable like any never-delivered request; but the limit reached is the gateway's own connection cap,
    not the upstream failing, so the client gets 503 and a time to come back instead of a 502 that would blame the
    upstream."""

    status = 503
    default_reason = "upstream_pool_exhausted"


class UpstreamProtocolError(GatewayError):
    status = 502
    code = UPSTREAM_PROTOCOL
    default_reason = "upstream_protocol_error"


class UpstreamTimeout(GatewayError):
    status = 504
    code = UPSTREAM_TIMEOUT
    default_reason = "upstream_timeout"


JsonRpcId = str | int | None


def error_payload(err: GatewayError, rpc_id: JsonRpcId) -> dict[str, Any]:
    """The JSON-RPC error object for `err`, echoing the request's id (null when there is none)."""
    data: dict[str, Any] = {"reason": err.reason}
    if err.stage:
        data["stage"] = err.stage
    data.update(err.data)
    message = err.message
    retry = data.get("retryAfterSeconds")
    if retry is not None and "retry" not in message.lower():
        # TypeScript v1 clients show only the text, so the wait goes into the message too.
        message = f"{message} (retry after {retry}s)"
    return {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": err.code, "message": message, "data": data}}


def error_body(err: GatewayError, rpc_id: JsonRpcId) -> bytes:
    return orjson.dumps(error_payload(err, rpc_id))


def render_error(
    err: GatewayError,
    rpc_id: JsonRpcId = None,
    *,
    request_id: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    status_200: bool = False,
) -> web.Response:
    """The one renderer: status, `application/json` JSON-RPC error body echoing `rpc_id`, and the error's headers.

    `status_200` is the per-route compatibility switch for clients that hang on a non-2xx answer (the body is
    the same; MCP allows a JSON-RPC error in a 200 answer to a POST).
    """
    headers: dict[str, str] = {}
    if extra_headers:
        headers.update(extra_headers)
    headers.update(err.headers)
    if request_id:
        headers["X-Request-ID"] = request_id
    headers["Cache-Control"] = "no-store"
    return web.Response(
        status=200 if status_200 else err.status,
        body=error_body(err, rpc_id),
        content_type="application/json",
        headers=headers,
    )
