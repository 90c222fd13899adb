"""The one error renderer: status, content type, JSON-RPC body echoing the id, headers, compat 200, code ranges."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway import errors
from gateway.errors import (
    BodyTooLarge,
    CircuitOpen,
    Forbidden,
    GatewayError,
    InvalidRequest,
    NotFound,
    ParseError,
    RateLimited,
    RetryableRefusal,
    SessionNotFound,
    Unauthenticated,
    UpstreamTimeout,
    UpstreamUnavailable,
    render_error,
)

pytestmark = pytest.mark.unit

# the JSON-RPC/MCP reserved codes the gateway may emit on purpose; everything else must be its own range
RESERVED_OK = {errors.PARSE_ERROR, errors.INVALID_REQUEST, errors.METHOD_NOT_FOUND, errors.INVALID_PARAMS}
RESERVED_OK.add(errors.HEADER_MISMATCH)


def all_error_classes() -> list[type[GatewayError]]:
    return [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, GatewayError) and obj not in (GatewayError, RetryableRefusal)
    ]


def payload(resp: web.Response) -> dict[str, Any]:
    assert resp.body is not None
    out: dict[str, Any] = orjson.loads(resp.body)  # type: ignore[arg-type]
    return out


def make(cls: type[GatewayError]) -> GatewayError:
    if issubclass(cls, RetryableRefusal):
        return cls("refused", retry_after=2.5)
    return cls("refused")


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_renders_a_jsonrpc_error(cls: type[GatewayError]) -> None:
    err = make(cls)
    resp = render_error(err, "req-7", request_id="rid-1")
    assert resp.status == cls.status
    assert resp.content_type == "application/json"
    assert resp.headers["X-Request-ID"] == "rid-1"
    assert resp.headers["Cache-Control"] == "no-store"
    body = payload(resp)
    assert body["jsonrpc"] == "2.0" and body["id"] == "req-7"
    assert body["error"]["code"] == cls.code
    assert body["error"]["data"]["reason"] == cls.default_reason
    assert body["error"]["message"].startswith("refused")


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_gateway_codes_stay_outside_the_reserved_range(cls: type[GatewayError]) -> None:
    code = cls.code
    assert code in RESERVED_OK or not (-32768 <= code <= -32000), f"{cls.__name__} uses reserved code {code}"


def test_gateway_codes_and_reasons_are_distinct() -> None:
    # a client tells refusals apart by (code, reason); two classes sharing both would be indistinguishable
    seen: dict[tuple[int, str], str] = {}
    for cls in all_error_classes():
        key = (cls.code, cls.default_reason)
        assert key not in seen, f"{cls.__name__} and {seen[key]} share {key}"
        seen[key] = cls.__name__


def test_status_table_of_design_section_3() -> None:
    assert (ParseError.status, ParseError.code) == (400, -32700)
    assert (InvalidRequest.status, InvalidRequest.code) == (400, -32600)
    assert (BodyTooLarge.status, BodyTooLarge.code) == (413, -32600)
    assert Unauthenticated.status == 401 and Forbidden.status == 403
    assert RateLimited.status == 429 and CircuitOpen.status == 503
    assert UpstreamUnavailable.status == 502 and UpstreamTimeout.status == 504
    # 404 only for an unknown route or session, never for policy
    four_oh_fours = {c.__name__ for c in all_error_classes() if c.status == 404}
    assert four_oh_fours == {"NotFound", "SessionNotFound"}


@pytest.mark.parametrize("rpc_id", [None, 0, 42, "abc", ""])
def test_id_is_echoed_or_null(rpc_id: str | int | None) -> None:
    body = payload(render_error(Forbidden("no"), rpc_id))
    assert "id" in body and body["id"] == rpc_id


def test_retry_after_header_and_data() -> None:
    err = RateLimited("slow down", retry_after=2.2, reason="tenant_limit", data={"limit": "tenant"})
    resp = render_error(err, 1, extra_headers={"RateLimit-Remaining": "0"})
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "3"  # whole seconds, rounded up
    assert resp.headers["RateLimit-Remaining"] == "0"
    error = payload(resp)["error"]
    assert error["code"] == errors.RATE_LIMITED
    assert error["data"] == {"reason": "tenant_limit", "retryAfterSeconds": 3, "limit": "tenant"}
    # TypeScript v1 clients show only the message, so the wait is in it too
    assert "retry after 3s" in error["message"]


@pytest.mark.parametrize(("after", "header"), [(0.0, "1"), (-5.0, "1"), (0.01, "1"), (1.0, "1"), (59.5, "60")])
def test_retry_after_is_at_least_one_second(after: float, header: str) -> None:
    err = CircuitOpen("open", retry_after=after)
    assert err.retry_after >= 0
    assert render_error(err).headers["Retry-After"] == header


def test_error_headers_win_over_extra_headers() -> None:
    err = RateLimited("x", retry_after=4)
    resp = render_error(err, extra_headers={"Retry-After": "999", "X-Extra": "1"})
    assert resp.headers["Retry-After"] == "4" and resp.headers["X-Extra"] == "1"


def test_compat_200_keeps_body_and_headers() -> None:
    err = RateLimited("x", retry_after=1)
    normal, compat = render_error(err, 5), render_error(err, 5, status_200=True)
    assert (normal.status, compat.status) == (429, 200)
    assert normal.body == compat.body
    assert compat.headers["Retry-After"] == "1"


def test_stage_and_data_in_body() -> None:
    err = Forbidden("tool not allowed", reason="tool_denied", stage="authz", data={"tool": "x"})
    error = payload(render_error(err, 3))["error"]
    assert error["data"] == {"reason": "tool_denied", "stage": "authz", "tool": "x"}
    assert error["message"] == "tool not allowed"


def test_overrides_of_code_and_status() -> None:
    err = GatewayError("teapot", code=-31999, status=418, reason="teapot")
    resp = render_error(err)
    assert resp.status == 418 and payload(resp)["error"]["code"] == -31999
    # the override is per instance, never on the class
    assert GatewayError.status == 500 and GatewayError("x").code == -31500


def test_no_request_id_header_when_none() -> None:
    assert "X-Request-ID" not in render_error(NotFound("x")).headers
    assert render_error(SessionNotFound("x")).status == 404


def test_repr_names_status_code_reason() -> None:
    assert repr(Forbidden("x", reason="scope_denied")) == "Forbidden(status=403, code=-31403, reason='scope_denied')"


def test_documented_error_table_matches_the_code() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "foundation.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (\d{3}) \| (-\d+) \| `(\w+)` \|", doc, flags=re.MULTILINE)
    documented = {name: (int(status), int(code), reason) for name, status, code, reason in rows}
    actual = {c.__name__: (c.status, c.code, c.default_reason) for c in [*all_error_classes(), GatewayError]}
    assert documented == actual, "docs/foundation.md section 3 is out of step with gateway/errors.py"
