"""Pieces of the built-in authorization server: the form CSRF token and ticket, the per-address limiter, redirect
URI rules, and the signing key file shared by workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.clientip import address_group
from gateway.oauth import forms, redirects
from gateway.oauth.config import OAuthSettings
from gateway.oauth.limits import AddressLimiter
from gateway.oauth.signing import from_pem, generate_pem, load_or_create

pytestmark = pytest.mark.unit

SECRET = b"f" * 32


def test_csrf_token_is_bound_to_the_nonce() -> None:
    token = forms.csrf_token(SECRET, "nonce-a")
    assert forms.csrf_ok(SECRET, "nonce-a", token)
    assert not forms.csrf_ok(SECRET, "nonce-b", token)
    assert not forms.csrf_ok(SECRET, None, token)
    assert not forms.csrf_ok(SECRET, "nonce-a", None)
    assert not forms.csrf_ok(b"g" * 32, "nonce-a", token)


def test_ticket_is_signed_fresh_and_bound_to_the_browser() -> None:
    ticket = forms.make_ticket(SECRET, "nonce-a", {"k": "rw"}, 60)
    assert forms.read_ticket(SECRET, "nonce-a", ticket) is not None
    assert forms.read_ticket(SECRET, "nonce-b", ticket) is None  # another browser
    raw, _, mac = ticket.rpartition(".")
    assert forms.read_ticket(SECRET, "nonce-a", raw[:-2] + "AA." + mac) is None  # tampered
    assert forms.read_ticket(SECRET, "nonce-a", forms.make_ticket(SECRET, "nonce-a", {}, -1)) is None  # expired


def test_limiter_per_address_with_refill() -> None:
    now = [0.0]
    limiter = AddressLimiter(3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0.0  # another address has its own budget
    now[0] += 20.0  # a third of a minute: one request's worth
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0


def test_limiter_keeps_one_budget_per_ipv6_64() -> None:
    limiter = AddressLimiter(2, clock=lambda: 0.0)
    # a host rotating through its /64 (privacy addresses) spends one budget
    assert [limiter.take(f"2001:db8:1:2::{i:x}") for i in range(2)] == [0.0, 0.0]
    assert limiter.take("2001:db8:1:2:ffff:ffff:ffff:ffff") > 0
    assert limiter.take("2001:db8:1:3::1") == 0.0  # the next /64 is someone else
    # an IPv4-mapped address is its IPv4 address; IPv4 addresses stay one budget each
    assert [limiter.take("192.0.2.7"), limiter.take("::ffff:192.0.2.7")] == [0.0, 0.0]
    assert limiter.take("192.0.2.7") > 0
    assert limiter.take("192.0.2.8") == 0.0
    assert address_group("fe80::1%eth0") == "fe80::/64"
    assert address_group("not-an-address") == "not-an-address"


def test_limiter_memory_is_bounded() -> None:
    limiter = AddressLimiter(1)
    for i in range(20_000):
        limiter.take(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) <= 10_000


@pytest.mark.parametrize(
    "uri",
    [
        "javascript:alert(1)",
        "data:text/html,x",
        "file:///etc/passwd",
        "http://evil.test/cb",
        "https://a.test/cb#x",
        "https://user@a.test/cb",
        "https://a.test:99999/cb",
        "",
        "https://a.test/" + "x" * 600,
    ],
)
def test_redirect_uris_never_allowed(uri: str) -> None:
    assert redirects.problem(uri) is not None


def test_redirect_policy() -> None:
    cfg = OAuthSettings()
    for ok in (
        "http://127.0.0.1:3334/cb",
        "http://localhost:1/x",
        "http://[::1]:9/y",
        "https://claude.ai/api/mcp/auth_callback",
    ):
        assert redirects.problem(ok) is None and redirects.allowed(ok, cfg), ok
    assert redirects.allowed("cursor://anysphere.cursor-retrieval/oauth/user-x/callback", cfg)
    assert not redirects.allowed("https://claude.ai/api/mcp/auth_callback2", cfg)
    assert not redirects.allowed("https://evil.test/cb", cfg)
    assert not redirects.allowed("http://127.0.0.1:3334/cb", OAuthSettings(allow_loopback_redirects=False))
    with pytest.raises(ValueError):
        OAuthSettings(allowed_redirect_uris=["https://a.test*"])  # would match a.test.evil.net


def test_signing_key_file_is_created_once_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "var" / "key.pem"
    first = load_or_create(path)
    second = load_or_create(path)
    assert first.kid == second.kid and first.form_secret == second.form_secret
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert "d" not in first.public_jwk and first.jwks()["keys"][0]["kid"] == first.kid
    assert from_pem(generate_pem()).kid != first.kid
