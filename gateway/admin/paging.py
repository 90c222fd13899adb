"""What every admin answer shares: one timestamp format and one way to page through a list.

Timestamps are RFC 3339 in UTC with microseconds and a `Z` (`2026-12-07T17:20:19.123456Z`), the audit records'
own format (gateway/audit/record.py), whatever the source held (a PostgreSQL `timestamptz`, a keys.yaml time
with an offset, a wall-clock float). Lists take `limit` (1..MAX_LIMIT, default DEFAULT_LIMIT) and `cursor`, the
opaque `next_cursor` of the previous page (null on the last page); items come in a fixed order, so a cursor is the
sort key of the last item shown and a page never repeats or skips an item that existed throughout.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from gateway.audit.record import ts_from_datetime
from gateway.errors import InvalidRequest

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_CURSOR = 512
T = TypeVar("T")


def rfc3339(value: datetime | float | None) -> str | None:
    """A time (aware datetime, naive datetime meaning UTC, or Unix seconds) in the admin API's one format."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return ts_from_datetime(value if value.tzinfo is not None else value.replace(tzinfo=UTC))
    return ts_from_datetime(datetime.fromtimestamp(value, UTC))


def parse_limit(query: Mapping[str, str]) -> int:
    raw = query.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if len(raw) > 8 or not raw.isdigit():
        raise InvalidRequest("limit must be an integer", reason="bad_query")
    limit = int(raw)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be 1..{MAX_LIMIT}", reason="bad_query")
    return limit


def encode_cursor(key: Sequence[str]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def decode_cursor(value: str, parts: int) -> tuple[str, ...]:
    """The sort key a cursor carries (`parts` strings); 400 `bad_cursor` for anything else."""
    try:
        if len(value) > MAX_CURSOR:
            raise ValueError
        key = orjson.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise InvalidRequest("cursor is not valid", reason="bad_cursor") from None
    if not isinstance(key, list) or len(key) != parts or not all(isinstance(k, str) for k in key):
        raise InvalidRequest("cursor is not valid", reason="bad_cursor")
    return tuple(key)


@dataclass(frozen=True, slots=True)
class Page:
    limit: int
    after: tuple[str, ...] | None  # the sort key of the previous page's last item


def parse_page(query: Mapping[str, str], parts: int) -> Page:
    cursor = query.get("cursor")
    return Page(parse_limit(query), None if not cursor else decode_cursor(cursor, parts))


def paginate(items: Sequence[T], sort_key: Callable[[T], tuple[str, ...]], page: Page) -> tuple[list[T], str | None]:
    """One page of `items` in `sort_key` order after `page.after`, and the cursor of the next page (or None)."""
    ordered = sorted(items, key=sort_key)
    if page.after is not None:
        after = page.after
        ordered = [item for item in ordered if sort_key(item) > after]
    shown = ordered[: page.limit]
    more = len(ordered) > page.limit
    return shown, encode_cursor(sort_key(shown[-1])) if more and shown else None


def list_answer(name: str, items: Any, next_cursor: str | None, **extra: Any) -> dict[str, Any]:
    return {name: items, "next_cursor": next_cursor, **extra}
