"""Parsing of the admin audit query: filters become bind parameters (never SQL text), cursors round-trip."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from multidict import MultiDict

from gateway.admin.audit import AuditQuery, encode_cursor, parse_query
from gateway.errors import InvalidRequest

pytestmark = pytest.mark.unit


def test_filters_are_bound_parameters() -> None:
    q = parse_query(
        MultiDict(
            {
                "from": "2026-11-25T00:00:00",
                "to": "1764115200",
                "server": "x' OR '1'='1",
                "method": "tools/call",
                "decision": "refused",
                "limit": "10",
            }
        )
    )
    sql, params = q.sql()
    assert "x' OR" not in sql and "tools/call" not in sql
    assert params[0] == datetime(2026, 11, 25, tzinfo=UTC)
    assert params[1] == datetime.fromtimestamp(1764115200, UTC)
    assert params[2:5] == ["x' OR '1'='1", "tools/call", "refused"]
    assert params[-1] == 11  # one more than the page, to know whether another page exists
    assert sql.endswith("ORDER BY ts DESC, id DESC LIMIT $6")


def test_no_filters() -> None:
    sql, params = AuditQuery().sql()
    assert "WHERE" not in sql and params == [101]


def test_cursor_round_trip() -> None:
    ts = datetime(2026, 11, 25, 23, 59, 59, 123456, tzinfo=UTC)
    rid = uuid.uuid4()
    q = parse_query(MultiDict({"cursor": encode_cursor(ts, rid)}))
    assert q.cursor == (ts, rid)
    sql, params = q.sql()
    assert "(ts, id) < ($1, $2)" in sql and params[:2] == [ts, rid]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"decision": "maybe"},
        {"from": "yesterday"},
        {"cursor": "not-a-cursor"},
        {"server": "x" * 300},
        {"method": "a\x00b"},
    ],
)
def test_bad_parameters_are_400(params: dict[str, str]) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_query(MultiDict(params))
    assert info.value.status == 400
