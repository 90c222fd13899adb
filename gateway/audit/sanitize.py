"""Sanitization of everything user-controlled that goes into an audit record.

Secrets are redacted two ways: by key name, matched on whole words (`auth_token`, `apiKey`, `X-Api-Key` match;
`max_tokens`, `tokenizer`, `keyboard` do not), and by value pattern (JWTs, bearer credentials, cloud and SaaS keys,
PEM private keys, gateway API keys, card numbers that pass the Luhn check). Long strings are truncated and the walk
is bounded in depth and width, so a hostile argument can cost the writer only a bounded amount of work.

Every string also loses NUL characters: PostgreSQL text and jsonb reject them, and one poisoned record must not
block a whole batch.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from dataclasses import dataclass
from typing import Any

from gateway.bounds import bound

REDACTED = "[REDACTED]"

# single words that name a secret
SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "pwd",
        "secret",
        "token",
        "authorization",
        "apikey",
        "cookie",
        "credential",
        "credentials",
        "pin",
        "ssn",
        "otp",
        "jwt",
        "bearer",
    }
)
# consecutive word pairs that name a secret (after splitting `api_key`, `privateKey`, `x-api-key` ...)
SECRET_PAIRS = frozenset(
    {
        ("api", "key"),
        ("private", "key"),
        ("secret", "key"),
        ("access", "key"),
        ("signing", "key"),
        ("encryption", "key"),
        ("session", "id"),
        ("set", "cookie"),
        ("card", "number"),
        ("credit", "card"),
        ("client", "secret"),
        ("security", "code"),
    }
)

_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def key_words(key: str) -> list[str]:
    """`X-Api-Key` -> [x, api, key]; `refreshToken` -> [refresh, token]; `APIKey` -> [api, key]."""
    words: list[str] = []
    for part in _WORD_SPLIT.split(key):
        if part:
            words.extend(w.lower() for w in _CAMEL.findall(part))
    return words


# Keys repeat across records (notes are named by code, argument keys by tool schemas): classifying one costs two
# regex passes, a cache hit ~0.1 us. Bounded, so hostile key names can only evict entries, never grow memory.
def _is_secret_key(key: str) -> bool:
    words = key_words(key)
    if any(w in SECRET_WORDS for w in words):
        return True
    return any(pair in SECRET_PAIRS for pair in itertools.pairwise(words))


is_secret_key = functools.lru_cache(maxsize=4096)(_is_secret_key)


# (label, pattern); each match is replaced by [REDACTED:<label>]
VALUE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "private_key",
        re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)", re.S),
    ),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")),
    ("bearer", re.compile(r"(?i)\b(?:bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}")),
    ("gateway_key", re.compile(r"\bmgw_[A-Za-z0-9]+_[A-Za-z0-9_-]{8,}")),
    ("aws_key", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b")),
    ("aws_secret", re.compile(r"(?i)aws_?secret_?access_?key\W{0,3}[A-Za-z0-9/+=]{40}")),
    ("google_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b")),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("stripe_key", re.compile(r"\b[rsp]k_(?:live|test)_[A-Za-z0-9]{16,}")),
    ("openai_key", re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}")),
    ("azure_key", re.compile(r"(?i)AccountKey=[A-Za-z0-9+/=]{40,}")),
    ("url_password", re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)")),
)
_CARD_CANDIDATE = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")

_LEADING_FLAGS = re.compile(r"^\(\?[aiLmsux]+\)")


def _scoped(pattern: re.Pattern[str]) -> str:
    """`pattern` as a group that keeps its own flags inside a larger alternation."""
    flags = "".join(c for f, c in ((re.I, "i"), (re.S, "s"), (re.M, "m"), (re.X, "x")) if pattern.flags & f)
    return f"(?{flags}:{_LEADING_FLAGS.sub('', pattern.pattern)})"


# Almost no value holds a secret, yet checking each pattern in turn costs one regex call per pattern. This
# alternation of them all (and of the card candidate) finds nothing exactly when none of them would: then no
# substitution can change the text, and one scan replaces fourteen.
_ANY_SECRET = re.compile("|".join(_scoped(p) for p in (*(p for _, p in VALUE_PATTERNS), _CARD_CANDIDATE)))
_ANY_CREDENTIAL = re.compile("|".join(_scoped(p) for _, p in VALUE_PATTERNS))
# an identifier that no credential pattern can match: shorter than the shortest match (a password in a URL,
# `x://a:b@`, needs 7 characters around it), or only digits, lowercase hex and dashes, as in a UUID (every pattern
# needs an uppercase letter, a letter past `f`, or punctuation other than a dash). The gateway's own request ids and
# the usual JSON-RPC ids are such, and the full scan cost ~7 us a record for them (tests/unit/audit/test_sanitize.py
# checks the claim on random strings of that alphabet).
_PLAIN_ID = re.compile(r"[0-9a-f-]*")  # hex ids and UUIDs
_SHORTEST_CREDENTIAL = 7


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_sub(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    if 13 <= len(digits) <= 19 and luhn_ok(digits):
        return "[REDACTED:card]"
    return match.group(0)


def _valid_unicode(text: str) -> str:
    # header values arrive with surrogate escapes for undecodable bytes; neither orjson nor PostgreSQL take those
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text


# Short values recur from record to record (note values, enum-like arguments): one regex scan each is most of a
# record's sanitizing. Only values no pattern changed are remembered, so no secret is ever kept here; bounded, so
# hostile values can only cost a rescan, never memory.
_CLEAN_SHORT: dict[str, None] = {}
_CLEAN_SHORT_MAX_LEN = 128
_CLEAN_SHORT_MAX = 4096


def redact_text(text: str, remember: bool = True) -> str:
    """Replace every secret-looking substring of `text`. `remember=False` for an unauthenticated caller's values,
    which must not take a place in the memo (gateway/bounds.py)."""
    if text in _CLEAN_SHORT:
        return text
    red = _redact(text)
    if remember and red is text and len(text) <= _CLEAN_SHORT_MAX_LEN:
        if len(_CLEAN_SHORT) >= _CLEAN_SHORT_MAX:
            _CLEAN_SHORT.clear()
        _CLEAN_SHORT[text] = None
    return red


def _redact(text: str, cards: bool = True) -> str:
    text = _valid_unicode(text)
    if _ANY_SECRET.search(text) is None:
        return text
    for label, pattern in VALUE_PATTERNS:
        if label == "private_key" and "PRIVATE KEY" not in text:
            continue  # the costliest pattern; skip it on the common path
        text = pattern.sub(f"[REDACTED:{label}]", text)
    if cards and any(c.isdigit() for c in text):
        text = _CARD_CANDIDATE.sub(_card_sub, text)
    return text


def redact_identifier(text: str) -> str:
    """The credential patterns on a client-chosen identifier (request id, JSON-RPC id, method, tool name), without
    the card-number check: identifiers are full of digit runs (a gateway request id ends in a zero-padded counter,
    which passes Luhn), and a card number in one is not a credential that opens anything. Never memoized."""
    if len(text) < _SHORTEST_CREDENTIAL or _PLAIN_ID.fullmatch(text):
        return text
    if _ANY_CREDENTIAL.search(text) is None:
        return _valid_unicode(text)
    return _redact(text, cards=False)


def clean_text(text: str, max_len: int) -> str:
    """Valid, NUL-free and bounded (for identifiers like tool names and reasons: no pattern redaction)."""
    if len(text) <= max_len and text.isascii() and "\x00" not in text:
        return text  # the common case (a dozen identifiers per record): nothing to replace or cut
    # bound() keeps a value capture() already bounded to the same length as it is (its marker says how long it was)
    return bound(_valid_unicode(text), max_len)


@dataclass(frozen=True, slots=True)
class SanitizeLimits:
    max_string: int = 256
    max_items: int = 50
    max_depth: int = 6
    # for the whole value: per-container limits alone still let a 4 MiB body of nested lists hold ~400,000 strings,
    # and pattern-scanning them all (~1 us each) held the writer's event loop for most of a second
    max_total_values: int = 2000
    max_total_chars: int = 256 * 1024


class _Budget:
    """What one `sanitize` call may still spend (strings scanned count their length)."""

    __slots__ = ("chars", "values")

    def __init__(self, limits: SanitizeLimits) -> None:
        self.values = limits.max_total_values
        self.chars = limits.max_total_chars

    def spend(self, chars: int) -> bool:
        self.values -= 1
        self.chars -= chars
        return self.values >= 0 and self.chars >= 0


OVER_BUDGET = "[truncated: audit size budget]"


INT64_MAX = 2**63 - 1


def sanitize(value: Any, limits: SanitizeLimits = SanitizeLimits(), *, remember: bool = True) -> Any:
    """A JSON-safe, secret-free, bounded copy of `value` (arguments of a tool call). `remember=False`: memo nothing
    (an unauthenticated caller's values). Past `max_total_values` / `max_total_chars` every further value is
    replaced by OVER_BUDGET, so the cost of one record is bounded whatever the body holds."""
    return _sanitize(value, limits, 0, remember, _Budget(limits))


def _sanitize(value: Any, limits: SanitizeLimits, _depth: int, remember: bool, budget: _Budget) -> Any:
    if not budget.spend(min(len(value), limits.max_string * 4) if isinstance(value, str) else 1):
        return OVER_BUDGET
    if isinstance(value, str):
        red = redact_text(value[: limits.max_string * 4], remember)
        if len(red) > limits.max_string or len(value) > limits.max_string * 4:
            return f"{red[: limits.max_string]}...[truncated {len(value) - limits.max_string} chars]"
        return red
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # PostgreSQL jsonb and orjson both need it to fit 64 bits; beyond that keep the digits as text
        return value if -INT64_MAX <= value <= INT64_MAX else str(value)
    if isinstance(value, float):
        # the record's hash must survive a jsonb round trip: jsonb prints 1e16 as an integer and has no -0.0,
        # and rejects NaN/inf, so those become text (or plain 0.0)
        if value == 0:
            return 0.0
        if not math.isfinite(value) or abs(value) >= 1e15:
            return str(value)
        return value
    if _depth >= limits.max_depth:
        return "[truncated: too deep]"
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= limits.max_items:
                out["..."] = f"[truncated {len(value) - limits.max_items} keys]"
                break
            key = clean_text(str(k), 128)
            secret = is_secret_key(key) if remember else _is_secret_key(key)
            out[key] = REDACTED if secret else _sanitize(v, limits, _depth + 1, remember, budget)
        return out
    if isinstance(value, list | tuple):
        items = [_sanitize(v, limits, _depth + 1, remember, budget) for v in value[: limits.max_items]]
        if len(value) > limits.max_items:
            items.append(f"[truncated {len(value) - limits.max_items} items]")
        return items
    return clean_text(str(value), limits.max_string)
