"""Byte-for-byte and value-for-value pins of the audit writer's encodings against straightforward references:
the fast paths (column fetch in to_row, cached time heads, ...) must not change a row, a line or a hash."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from asyncpg.pgproto.pgproto import UUID as PgUUID

from gateway.audit.hashchain import HashChain, record_hash
from gateway.audit.postgres import to_row
from gateway.audit.record import EPOCH, FIELDS, JSON_FIELDS, TIME_FIELDS, RiskRules, build_record, capture, format_ts
from gateway.audit.sanitize import SanitizeLimits
from gateway.audit.throughput import _context
from gateway.settings import AuditSettings

pytestmark = pytest.mark.unit


def _reference_row(rec: dict[str, Any]) -> tuple[Any, ...]:
    row: list[Any] = []
    for f in FIELDS:
        v = rec.get(f)
        if v is None:
            row.append(None)
        elif f in TIME_FIELDS:
            row.append(datetime.fromisoformat(v).astimezone(UTC))
        elif f in JSON_FIELDS:
            row.append(orjson.dumps(v).decode())
        elif f == "id":
            row.append(uuid.UUID(v))
        else:
            row.append(v)
    return tuple(row)


def _same_row(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    assert len(a) == len(b) == len(FIELDS)
    for f, x, y in zip(FIELDS, a, b, strict=True):
        if f == "id" and x is not None:
            # asyncpg stores a canonical str and a uuid.UUID as the same 16 bytes
            assert uuid.UUID(str(x)) == uuid.UUID(str(y)), f
        else:
            assert type(x) is type(y) and x == y, f
            if isinstance(x, datetime):
                assert x.utcoffset() == y.utcoffset() == timedelta(0)


def _sealed(n: int = 3) -> list[dict[str, Any]]:
    settings = AuditSettings()
    risk, limits = RiskRules(settings.risk), SanitizeLimits(max_string=settings.max_value_length)
    chain = HashChain()
    out = []
    for i in range(n):
        ev = capture(_context(i))
        ev.notes = {"ratelimit_backend": "memory", "n": i}
        ev.shadow = (("authz", "scope"),)
        out.append(chain.seal(build_record(ev, ev.ts_us, risk, limits)))
    return out


def test_to_row_matches_reference() -> None:
    for rec in _sealed():
        _same_row(to_row(rec), _reference_row(rec))


def test_to_row_odd_records_match_reference() -> None:
    rec = _sealed(1)[0]
    partial = {k: v for k, v in rec.items() if k not in ("notes", "upstream", "seq")}
    _same_row(to_row(partial), _reference_row(partial))
    braced = dict(rec, id="{" + rec["id"].replace("-", "")[:32] + "}")
    row = to_row(braced)
    assert isinstance(row[FIELDS.index("id")], uuid.UUID)
    _same_row(row, _reference_row(braced))
    offset = dict(rec, ts="2026-11-25T23:59:59.5+02:00", started_at=None)
    _same_row(to_row(offset), _reference_row(offset))


def test_to_row_rejects_what_the_reference_rejects() -> None:
    rec = _sealed(1)[0]
    for bad in ("not-a-uuid", "zzzzzzzz-zzzz-4zzz-8zzz-zzzzzzzzzzzz"):
        for fn in (to_row, _reference_row):
            try:
                fn(dict(rec, id=bad))
            except ValueError:
                continue
            # the canonical-looking shape is left to asyncpg's own parser, which raises ValueError the same way
            assert fn is to_row and len(bad) == 36
            with pytest.raises(ValueError):
                PgUUID(bad)
    assert str(PgUUID(rec["id"].upper())) == str(uuid.UUID(rec["id"].upper()))


def test_format_ts_alternating_seconds() -> None:
    base = 1_764_115_199_999_999
    for us in (base, base - 61_000_000, base + 1, base - 61_000_000 + 5, base + 86_400_000_000):
        assert format_ts(us) == (EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_sealed_hash_is_record_hash() -> None:
    for rec in _sealed():
        assert record_hash(rec) == rec["hash"]


_EMIT_SCRIPT = r"""
import sys
from gateway.logging import configure_logging
configure_logging("info", "json")
import structlog
from gateway.audit import recordlog
from gateway.audit.hashchain import HashChain
from gateway.audit.record import RiskRules, build_record, capture
from gateway.audit.sanitize import SanitizeLimits
from gateway.audit.throughput import _context
from gateway.settings import AuditSettings

settings = AuditSettings()
risk, limits, chain = RiskRules(settings.risk), SanitizeLimits(), HashChain("w1")
records = []
for i in range(7):
    ev = capture(_context(i))
    ev.request_id = f"r{i}-\u00e9\u2603"
    ev.notes = {"n": i, "text": "caf\u00e9 \U0001f600"}
    records.append(chain.seal(build_record(ev, ev.ts_us, risk, limits)))
structlog.contextvars.bind_contextvars(worker=3)
rlog = recordlog.RecordLog()
printer = rlog._batch_renderer(records)[0]
assert recordlog._raw_stream(printer) is sys.__stderr__, "the raw path must be the one under test"
structlog.get_logger("other").info("before")
rlog.emit(records)
structlog.get_logger("other").info("between")
recordlog._raw_stream = lambda printer: None  # the print() path, as before
rlog.emit(records)
print("after", file=sys.stderr)
"""


@pytest.mark.parametrize("unbuffered", [True, False])
def test_raw_log_write_puts_the_bytes_print_would(tmp_path: Path, unbuffered: bool) -> None:
    err = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"  # stderr's buffer is then a FileIO
    with err.open("wb") as fh:
        subprocess.run([sys.executable, "-c", _EMIT_SCRIPT], stderr=fh, check=True, env={**env, "PYTHONUTF8": "1"})
    stamp = re.compile(rb'"timestamp":"[^"]*"')
    lines = stamp.sub(b"T", err.read_bytes()).split(b"\n")
    assert lines[-2:] == [b"after", b""]
    assert b'"event":"before"' in lines[0] and b'"event":"between"' in lines[8]
    raw, printed = lines[1:8], lines[9:16]
    assert raw == printed
    assert all(
        line.startswith(b'{"id":"') and line.endswith(b',"event":"audit","worker":3,"level":"info",T}') for line in raw
    )
    assert "r0-é☃".encode() in raw[0]


def test_memoized_risk_level_is_the_rule_walk() -> None:
    from gateway.settings import AuditRiskRules

    config = AuditRiskRules(
        methods={"resources/read": "high"}, tools={"delete_*": "critical", "add": "low", "x?": "high"}
    )
    rules = RiskRules(config)
    ev = capture(_context(0))
    seen = set()
    for admin in (False, True):
        for method in (None, "tools/call", "resources/read", "ping", "batch", "notifications/x", "weird/method"):
            for tool in (None, "add", "delete_all", "xy", "other"):
                for stage in (None, "authn", "ratelimit", "forward", "client_guard"):
                    for status in (None, 200, 500, 503):
                        for decision in ("allowed", "refused", "error", "cancelled"):
                            ev.admin, ev.rpc_method, ev.tool = admin, method, tool
                            ev.refused_stage, ev.upstream_status = stage, status
                            want = RiskRules(config).level(ev, decision)  # a fresh instance: the rule walk
                            assert rules.level(ev, decision) == want  # first call fills the memo
                            assert rules.level(ev, decision) == want  # the second is served from it
                            seen.add(want)
    assert seen == {"low", "medium", "high", "critical"}
