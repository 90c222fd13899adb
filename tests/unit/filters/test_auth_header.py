"""Credential extraction from request headers: shapes accepted, and fuzzing that shows any header value ends in
a clean refusal (an `Unauthenticated` with 400 or 401) or a credential, never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import Unauthenticated
from gateway.filters.authn import presented_credential

pytestmark = pytest.mark.unit


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def refusal(*pairs: tuple[str, str]) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        presented_credential(headers(*pairs))
    return info.value


def test_shapes() -> None:
    assert presented_credential(headers()) is None
    cred = presented_credential(headers(("Authorization", "Bearer mgw_abc_0123456789abcdef")))
    assert cred is not None and cred.is_api_key and cred.via_header == "authorization"
    cred = presented_credential(headers(("authorization", "bearer a.b.c")))
    assert cred is not None and cred.is_jwt and not cred.is_api_key
    cred = presented_credential(headers(("X-API-Key", "mgw_abc_0123456789abcdef")))
    assert cred is not None and cred.via_header == "x-api-key"
    # Authorization wins over X-API-Key
    cred = presented_credential(headers(("X-API-Key", "mgw_x_1"), ("Authorization", "Bearer mgw_y_2")))
    assert cred is not None and cred.value == "mgw_y_2"


@pytest.mark.parametrize(
    ("pairs", "status", "reason"),
    [
        ((("Authorization", "Basic dXNlcjpwYXNz"),), 401, "bad_scheme"),
        ((("Authorization", "Bearer"),), 400, "malformed_authorization"),
        ((("Authorization", "Bearer a b"),), 400, "malformed_authorization"),
        ((("Authorization", "Bearer ä"),), 400, "malformed_authorization"),
        ((("Authorization", ""),), 400, "malformed_authorization"),
        ((("Authorization", "Bearer " + "a" * 20000),), 400, "malformed_authorization"),
        ((("Authorization", "Bearer a"), ("Authorization", "Bearer b")), 400, "malformed_authorization"),
        ((("X-API-Key", "mgw x"),), 400, "malformed_authorization"),
        ((("X-API-Key", "a"), ("X-API-Key", "b")), 400, "malformed_authorization"),
    ],
)
def test_refusals(pairs: tuple[tuple[str, str], ...], status: int, reason: str) -> None:
    err = refusal(*pairs)
    assert (err.status, err.reason) == (status, reason)


_ANY_HEADER = st.text(max_size=300)


@settings(max_examples=500, deadline=None)
@given(auth=st.none() | _ANY_HEADER, api_key=st.none() | _ANY_HEADER, dup=st.booleans())
def test_fuzzed_headers_never_raise_anything_else(auth: str | None, api_key: str | None, dup: bool) -> None:
    pairs: list[tuple[str, str]] = []
    if auth is not None:
        pairs.append(("Authorization", auth))
        if dup:
            pairs.append(("Authorization", auth))
    if api_key is not None:
        pairs.append(("X-API-Key", api_key))
    try:
        cred = presented_credential(headers(*pairs))
    except Unauthenticated as err:
        assert err.status in (400, 401)
        assert err.reason in {"bad_scheme", "malformed_authorization"}
        return
    if cred is not None:
        # whatever got through is a bounded, header-safe token
        assert cred.value and len(cred.value) <= 16 * 1024 and cred.value.isascii()
        assert " " not in cred.value


@settings(max_examples=300, deadline=None)
@given(token=st.from_regex(r"[A-Za-z0-9\-._~+/]{1,200}=*", fullmatch=True))
def test_any_token68_is_accepted_as_a_bearer_credential(token: str) -> None:
    cred = presented_credential(headers(("Authorization", f"Bearer {token}")))
    assert cred is not None and cred.value == token
