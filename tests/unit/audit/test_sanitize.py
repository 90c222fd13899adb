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


def test_one_value_costs_a_bounded_number_of_scans() -> None:
    """A hostile body of nested lists (125,000 strings within the per-container limits) is cut after the budget:
    sanitizing one record's arguments can never hold the writer's loop for long (found by the loop-lag work)."""
    from gateway.audit.sanitize import OVER_BUDGET, SanitizeLimits, sanitize

    hostile = [[[f"s{i}-{j}-{k}" for k in range(50)] for j in range(50)] for i in range(50)]
    limits = SanitizeLimits()
    scanned = 0

    def count(v: object) -> None:
        nonlocal scanned
        if isinstance(v, list):
            for x in v:
                count(x)
        elif isinstance(v, str) and v != OVER_BUDGET:
            scanned += 1

    out = sanitize(hostile, limits)
    count(out)
    assert scanned <= limits.max_total_values
    assert OVER_BUDGET in str(out)
    # a long string counts its length: a few of them use the character budget up
    big = {f"k{i}": "x" * 1024 for i in range(400)}
    cut = sanitize(big, SanitizeLimits(max_items=1000))
    assert sum(1 for v in cut.values() if v == OVER_BUDGET) > 100
    # an ordinary argument set is untouched by the budget
    normal = {"query": "select 1", "limit": 10, "tags": ["a", "b"], "nested": {"x": [1, 2, 3]}}
    assert sanitize(normal, limits) == normal


def test_identifiers_lose_credentials_but_not_their_digit_runs() -> None:
    from gateway.audit.sanitize import redact_identifier

    # the gateway's own request ids end in a zero-padded counter that passes the Luhn check: not a card
    assert redact_identifier("775a3f479bc6678e000000000000000a") == "775a3f479bc6678e000000000000000a"
    assert redact_identifier("4111111111111111") == "4111111111111111"
    assert redact_identifier("mgw_k1_c4QmM640oaGedztMYPY7i4XB8r1vgUaq") == "[REDACTED:gateway_key]"


def test_identifiers_skipped_as_plain_could_hold_no_credential() -> None:
    """redact_identifier() skips lowercase-hex identifiers and very short ones without scanning: no pattern may ever
    match such a string, or the shortcut would let a credential through."""
    import random

    from gateway.audit.sanitize import _SHORTEST_CREDENTIAL, VALUE_PATTERNS, redact_identifier

    rng = random.Random(7)
    samples = ["".join(rng.choice("0123456789abcdef-") for _ in range(rng.randint(1, 80))) for _ in range(3000)]
    alphabet = "abcdefghijklmnopqrstuvwxyzABCXYZ:/@._- "
    samples += ["".join(rng.choice(alphabet) for _ in range(_SHORTEST_CREDENTIAL - 1)) for _ in range(3000)]
    samples += ["x://a:", "eyJ.a.b", "mgw_a_", "token "]  # prefixes of real matches, one character short
    for text in samples:
        for label, pattern in VALUE_PATTERNS:
            assert pattern.search(text) is None, (label, text)
    assert redact_identifier("x://a:b@h") == "x://[REDACTED:url_password]@h"
