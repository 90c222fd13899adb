"""Bounds on client-controlled strings, applied before a value is cached, logged, labelled or stored.

A request can carry a method, tool name, resource uri, id, session id or header value of megabytes, and most of
the gateway keeps or writes something about every request (audit records, memos, log lines), refusals included.
Decisions (scopes, tool rules, routing) still see the whole value: a rule must judge what the upstream would get.
Only what the gateway keeps about a request is bounded, here, with one marker:

    <first `limit` characters>...[truncated N chars]

N is the number of characters cut, so the original length is `limit + N`; nothing is shortened silently. Values
that identify something (session ids) are replaced by a digest instead, so two long values never become one.

Memos keyed on request values take only values no longer than `MEMO_KEY_MAX` and never work on behalf of an
unauthenticated caller (`authenticated`): an anonymous client can cost the gateway a recomputation, never memory.
"""

from __future__ import annotations

import hashlib

# the longest value kept, per kind (the audit record's columns are cut at the same lengths)
METHOD_MAX = 128  # JSON-RPC method
NAME_MAX = 256  # tool or prompt name
URI_MAX = 1024  # resource uri
RPC_ID_MAX = 128  # JSON-RPC id, X-Request-ID
SESSION_ID_MAX = 256  # Mcp-Session-Id (longer ones are digested, not cut)
SERVER_MAX = 128  # the {server} of a route path (an unknown route's name is the client's)
SUBJECT_MAX = 256  # principal subject, tenant (from a verified JWT: signed, but not short by construction)
MEMO_KEY_MAX = 256  # a memo never remembers a value longer than this

_MARK = "...[truncated "
_MARK_END = " chars]"
# the marker's own length, digits included (a count never has more than 20 digits)
_MARK_ROOM = len(_MARK) + 20 + len(_MARK_END)
DIGEST_PREFIX = "sha256:"

# how a principal's credential was checked when the caller proved who it is (not "anonymous", not refused)
AUTHENTICATED_METHODS = frozenset({"api_key", "jwt"})


def is_truncated(text: str, limit: int) -> bool:
    """`text` is already `bound(x, limit)` of a longer x (so bounding it again must leave it as it is)."""
    return len(text) <= limit + _MARK_ROOM and text.startswith(_MARK, limit) and text.endswith(_MARK_END)


def bound(text: str, limit: int) -> str:
    """`text` when it is at most `limit` characters (or already bounded to `limit`), else its first `limit`
    characters and the truncation marker."""
    if len(text) <= limit or is_truncated(text, limit):
        return text
    return f"{text[:limit]}{_MARK}{len(text) - limit}{_MARK_END}"


def bound_opt(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else bound(text, limit)


def bound_key(text: str, limit: int = SESSION_ID_MAX) -> str:
    """An identifier to keep: itself when short, else a digest of it, so distinct long values stay distinct
    (a cut would make two sessions sharing a prefix look like one)."""
    if len(text) <= limit:
        return text
    return DIGEST_PREFIX + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def authenticated(auth_method: str | None) -> bool:
    """The caller proved who it is (API key, JWT). Memos work only for such callers."""
    return auth_method in AUTHENTICATED_METHODS
