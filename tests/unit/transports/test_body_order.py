"""When a POST's credentials are checked before its body is read (gateway/transports/common.py
`authn_before_body`, issue #14): only when reading would mean waiting for a large body."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.net.h1server import FastBody, FastRequest
from gateway.transports.common import EARLY_READ_BYTES, authn_before_body

pytestmark = pytest.mark.unit

CAP = 4 * 1024 * 1024


def lean_request(length: int, *, arrived: bool) -> FastRequest:
    conn = SimpleNamespace(remote="127.0.0.1", transport=None)
    body = FastBody(b"x" * length) if arrived else FastBody(b"", pending=True)
    headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
    return FastRequest(conn, "example", headers, body, length)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("length", "arrived", "first"),
    [
        pytest.param(100, True, False, id="small-body-here"),
        pytest.param(CAP, True, False, id="large-body-here"),
        pytest.param(100, False, False, id="small-body-coming"),
        pytest.param(EARLY_READ_BYTES + 1, False, True, id="large-body-coming"),
        pytest.param(CAP, False, True, id="body-at-the-cap-coming"),
    ],
)
def test_credentials_first_only_when_a_large_body_would_be_waited_for(length: int, arrived: bool, first: bool) -> None:
    assert authn_before_body(lean_request(length, arrived=arrived), None, CAP) is first


def test_a_declared_length_over_the_route_cap_is_refused_first_without_reading() -> None:
    route = SimpleNamespace(max_body_bytes=1024 * 1024)
    request = lean_request(2 * 1024 * 1024, arrived=False)
    assert authn_before_body(request, route, CAP) is False  # type: ignore[arg-type]
    assert authn_before_body(request, None, CAP) is True
