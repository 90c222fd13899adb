"""Sanitization of recorded arguments: whole-word key names, value patterns, Luhn, bounds, PostgreSQL safety."""

from __future__ import annotations

import orjson
import pytest

from gateway.audit.sanitize import REDACTED, SanitizeLimits, is_secret_key, key_words, luhn_ok, redact_text, sanitize

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "db_password",
        "token",
        "auth_token",
        "refreshToken",
        "access-token",
        "secret",
        "client_secret",
        "Authorization",
        "api_key",
        "apiKey",
        "APIKey",
        "X-Api-Key",
        "apikey",
        "private_key",
        "privateKey",
        "Cookie",
        "set-cookie",
        "credentials",
        "session_id",
        "card_number",
    ],
)
def test_secret_key_names_are_redacted(key: str) -> None:
    assert is_secret_key(key), key_words(key)
    assert sanitize({key: "hunter2"}) == {key: REDACTED}


@pytest.mark.parametrize(
    "key", ["max_tokens", "tokenizer", "keyboard", "key", "sort_key", "secretary", "passwordless_hint_count", "author"]
)
def test_words_containing_secret_substrings_are_kept(key: str) -> None:
    # whole words only: "tokens", "tokenizer", "secretary" are not secrets
    assert key == "passwordless_hint_count" or not is_secret_key(key)
    if key != "passwordless_hint_count":
        assert sanitize({key: "value"}) == {key: "value"}


def test_key_words_split_camel_snake_kebab() -> None:
    assert key_words("X-Api-Key") == ["x", "api", "key"]
    assert key_words("refreshToken") == ["refresh", "token"]
    assert key_words("APIKey") == ["api", "key"]
    assert key_words("max_tokens") == ["max", "tokens"]


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    ("text", "label", "secret"),
    [
        (f"token is {JWT} ok", "jwt", JWT),
        ("Authorization: Bearer abcdefghijklmnop1234", "bearer", "abcdefghijklmnop1234"),
        ("use AKIAIOSFODNN7EXAMPLE please", "aws_key", "AKIAIOSFODNN7EXAMPLE"),
        ("github: ghp_" + "a" * 36, "github_token", "ghp_" + "a" * 36),
        ("key AIza" + "B" * 35, "google_key", "AIza" + "B" * 35),
        ("stripe sk_live_" + "x" * 24, "stripe_key", "sk_live_" + "x" * 24),
        (f"pem {PEM} end", "private_key", "MIIEowIBAAKCAQEA"),
        ("gateway mgw_demo_devOnlyDemoSecret0123456789", "gateway_key", "devOnlyDemoSecret0123456789"),
        ("postgres://admin:s3cr3tpw@db/x", "url_password", "s3cr3tpw"),
        ("card 4111 1111 1111 1111 thanks", "card", "4111 1111 1111 1111"),
        ("card 4111-1111-1111-1111", "card", "4111-1111-1111-1111"),
    ],
)
def test_value_patterns_are_redacted(text: str, label: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out
    assert f"[REDACTED:{label}]" in out
    # also inside nested arguments under innocent keys
    nested = sanitize({"query": {"items": [text]}})
    assert secret not in orjson.dumps(nested).decode()


def test_numbers_failing_luhn_are_kept() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert redact_text("order 4111 1111 1111 1112") == "order 4111 1111 1111 1112"
    assert redact_text("phone 0123456789") == "phone 0123456789"


def test_long_values_truncated_and_structure_bounded() -> None:
    limits = SanitizeLimits(max_string=20, max_items=3, max_depth=2)
    out = sanitize({"text": "x" * 100, "list": list(range(10)), "deep": {"a": {"b": {"c": 1}}}}, limits)
    assert out["text"].startswith("x" * 20) and "truncated 80 chars" in out["text"]
    assert out["list"][:3] == [0, 1, 2] and "truncated 7 items" in out["list"][3]
    assert out["deep"] == {"a": "[truncated: too deep]"}
    wide = sanitize({f"k{i}": i for i in range(10)}, limits)
    assert len(wide) == 4 and "..." in wide


def test_output_is_postgres_and_json_safe() -> None:
    out = sanitize({"nul": "a\x00b", "big": 2**70, "nan": float("nan"), "neg0": -0.0, "huge": 1e20, "k\x00": 1})
    assert out["nul"] == "a\ufffdb"
    assert out["big"] == str(2**70)
    assert out["nan"] == "nan" and out["neg0"] == 0.0 and out["huge"] == "1e+20"
    assert "k\ufffd" in out
    assert "\x00" not in orjson.dumps(out).decode()
    # surrogate escapes (undecodable header bytes) become replacement characters instead of breaking orjson
    assert orjson.dumps(sanitize({"h": "bad\udcff"}))


def _redact_every_pattern(text: str) -> str:
    """redact_text without its one-scan prefilter: every pattern in turn, as the documented rules read."""
    from gateway.audit.sanitize import _CARD_CANDIDATE, VALUE_PATTERNS, _card_sub, _valid_unicode

    text = _valid_unicode(text)
    for label, pattern in VALUE_PATTERNS:
        text = pattern.sub(f"[REDACTED:{label}]", text)
    if any(c.isdigit() for c in text):
        text = _CARD_CANDIDATE.sub(_card_sub, text)
    return text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "memory",
        "hello world",
        "BEARER abcdefghijklmnop1234",
        "Token: abc",
        "x-aws_secret_access_key = " + "A" * 40,
        "AccountKey=" + "a" * 44,
        "see https://user:pw@example.com/x and xoxb-1234567890-abc",
        "sk-proj-" + "a" * 24 + " and rk_test_" + "b" * 16,
        "PRIVATE KEY without a begin line",
        "-----BEGIN PRIVATE KEY-----\nunterminated",
        "digits 1234 5678 9012 3456 789 and \uff14\uff11\uff11\uff11 fullwidth \u00b2\u00b3",
        "4111111111111111",
        "a\x00b \udcff eyJabcdef.ghijklm.nop",
        "ghp_" + "z" * 35,
        "mgw_k1_short",
    ],
)
def test_prefilter_never_changes_the_redaction(text: str) -> None:
    assert redact_text(text) == _redact_every_pattern(text)


@pytest.mark.parametrize("text", ["tools/call", "x" * 16, "x" * 17, "a\x00b", "é" * 3, "bad\udcff", ""])
def test_clean_text_fast_path_matches_the_slow_one(text: str) -> None:
    from gateway.audit.sanitize import _valid_unicode, clean_text

    slow = _valid_unicode(text)
    if len(slow) > 16:
        slow = f"{slow[:16]}...[truncated {len(slow) - 16} chars]"
    assert clean_text(text, 16) == slow
