"""Secrets out of everything the gateway shows: upstream URLs for display, credentials out of log lines.

`display_url` is the one way an upstream URL is shown (metric labels, log lines, admin answers, audit records):
`scheme://host:port/path`, with userinfo and query (and fragment) replaced by `[REDACTED]`. A URL without them
is shown unchanged, so labels of ordinary URLs stay what they were. Two instances of one server that differ only
in userinfo or query show the same text.

`redact_credentials` runs on every rendered log line (gateway/logging.py), the gateway's own and the libraries'
(aiohttp logs a malformed request's head, credentials included, in its exception text). It works on the
rendered text, where a header's end may be a real newline, an escaped `\\n` or a closing quote: no pattern
ever matches a quote or a backslash, so a replacement cannot break the JSON of a line.
"""

from __future__ import annotations

import re

REDACTED = "[REDACTED]"


def display_url(url: str) -> str:
    """`url` without userinfo, query or fragment (each replaced by the redaction marker)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = len(rest)
    for ch in "/?#":
        i = rest.find(ch)
        if 0 <= i < end:
            end = i
    authority, tail = rest[:end], rest[end:]
    if sep and "@" in authority:
        authority = f"{REDACTED}@{authority.rpartition('@')[2]}"
    cut = len(tail)
    for ch in "?#":
        i = tail.find(ch)
        if 0 <= i < cut:
            cut = i
    path, extra = tail[:cut], tail[cut:]
    if extra:
        path += f"{extra[0]}{REDACTED}"
    return f"{scheme}{sep}{authority}{path}"


# Header names whose values are credentials, followed by `:` or `=` (raw head, Python repr, JSON key) and the
# value up to the end of the line, a quote or a backslash (an escaped newline in a repr or a JSON string).
_HEADER = (
    r"(?P<hname>(?i:(?:proxy-)?authorization|x-api-key|api-key|(?:set-)?cookie))"
    r"(?P<hsep>['\"]?[ \t]*[:=][ \t]*['\"]?)"
    r"(?P<hval>[^\\\"'\r\n]+)"
)
# Credentials by shape. No leading \b: in a rendered line a credential often follows an escaped newline (`\nmgw_`)
_SHAPES = (
    r"(?P<scheme>(?i:bearer|basic)[ \t]+)(?P<token>[A-Za-z0-9._~+/=-]{8,})",
    r"(?P<gwkey>mgw_[A-Za-z0-9]+_[A-Za-z0-9_-]{8,})",
    r"(?P<jwt>eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*)",
    # absolute URLs with userinfo, a query or a fragment
    # (the lookbehind starts a scheme only at a word's start: tried at every letter of a long word, the match was
    # quadratic, 16 s for a 64,000-letter value)
    r"(?P<url>(?<![A-Za-z0-9+.-])(?i:[a-z][a-z0-9+.-]*)://[^\s\"'\\<>]*[@?#][^\s\"'\\<>]*)",
)
_PATTERN = re.compile("|".join((_HEADER, *_SHAPES)))
# what a URL keeps (its path) may still hold a credential by shape
_PATTERN_NO_URL = re.compile("|".join((_HEADER, *_SHAPES[:-1])))


def _replace(m: re.Match[str]) -> str:
    group = m.lastgroup
    if group == "hval":
        return f"{m['hname']}{m['hsep']}{REDACTED}"
    if group == "token":
        return f"{m['scheme']}{REDACTED}"
    if group == "url":
        return _PATTERN_NO_URL.sub(_replace, display_url(m[group]))
    return f"[REDACTED:{group}]"


# every pattern above needs one of these (lowercased): a line holding none is returned without the regex, which
# cost ~19 us on an ordinary log line (every refused request logs one)
_NEEDLES = ("authorization", "api-key", "cookie", "bearer", "basic", "mgw_", "eyj", "://")


def redact_credentials(text: str) -> str:
    """`text` with every credential-looking substring replaced."""
    low = text.lower()
    if not any(n in low for n in _NEEDLES):
        return text
    return _PATTERN.sub(_replace, text)
