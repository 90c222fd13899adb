"""Well-formed JSON of the wrong shape in fields the admin API and the OAuth registration endpoint read
(docs/security.md "Admin API" paging row and "Built-in OAuth authorization server"): each is a 400 naming the
field, never a 500. Before, a forged audit cursor `[ts, 1]` and `grant_types: [{}]` raised inside the handlers."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from multidict import MultiDict

from gateway.admin.audit import parse_query
from gateway.errors import InvalidRequest
from gateway.oauth.errors import OAuthError
from tests.unit.test_oauth_server import REDIRECT, Env

pytestmark = pytest.mark.unit


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor(["2026-01-01T00:00:00+00:00", 1]),
        _cursor(["2026-01-01T00:00:00+00:00", {"a": 1}]),
        _cursor([1, "00000000-0000-0000-0000-000000000000"]),
        _cursor(["2026-01-01T00:00:00+00:00"]),
        _cursor({"ts": 1}),
        _cursor(["not a time", "00000000-0000-0000-0000-000000000000"]),
        _cursor(["2026-01-01T00:00:00+00:00", "not-a-uuid"]),
        "%%%",
    ],
)
def test_a_forged_audit_cursor_is_bad_cursor(cursor: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_query(MultiDict({"cursor": cursor}))
    assert info.value.reason == "bad_cursor"


@pytest.mark.parametrize(
    "field",
    [
        {"grant_types": [{}]},
        {"grant_types": [["authorization_code"]]},
        {"grant_types": "authorization_code"},
        {"token_endpoint_auth_method": {"x": 1}},
        {"response_types": [{}]},
        {"client_name": {"x": 1}},
        {"redirect_uris": [{}]},
        {"redirect_uris": "http://127.0.0.1/cb"},
    ],
)
async def test_registration_metadata_of_the_wrong_shape_is_refused(field: dict[str, Any]) -> None:
    with pytest.raises(OAuthError) as info:
        await Env().server.register({"redirect_uris": [REDIRECT], **field})
    assert info.value.status == 400 and info.value.error in ("invalid_client_metadata", "invalid_redirect_uri")
