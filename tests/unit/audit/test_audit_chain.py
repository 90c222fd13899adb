"""Hash chain and `audit verify --file`: altered, removed, reordered and duplicated records are reported."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.audit.hashchain import GENESIS, Anchor, HashChain, record_hash, verify_records
from gateway.cli import main

pytestmark = pytest.mark.unit


def chain_of(n: int, writer: str = "w1") -> list[dict[str, Any]]:
    chain = HashChain(writer)
    return [
        chain.seal({"id": f"r{i}", "tenant": "acme", "latency_ms": i * 1.5, "arguments": {"a": i}}) for i in range(n)
    ]


def test_seal_links_records() -> None:
    recs = chain_of(3)
    assert [r["seq"] for r in recs] == [1, 2, 3]
    assert recs[0]["prev_hash"] == GENESIS
    assert recs[1]["prev_hash"] == recs[0]["hash"] and recs[2]["prev_hash"] == recs[1]["hash"]
    assert all(record_hash(r) == r["hash"] for r in recs)
    assert verify_records(recs).ok


def test_altered_record_is_reported_once() -> None:
    recs = chain_of(5)
    recs[2]["tenant"] = "evil"
    report = verify_records(recs)
    assert not report.ok
    assert len(report.problems) == 1 and "seq 3" in report.problems[0] and "altered" in report.problems[0]


def test_removed_record_is_reported() -> None:
    recs = chain_of(5)
    del recs[1]
    report = verify_records(recs)
    assert any("missing" in p for p in report.problems)


def test_reordered_records_are_reported() -> None:
    recs = chain_of(5)
    recs[1], recs[3] = recs[3], recs[1]
    report = verify_records(recs)
    assert any("out of order" in p for p in report.problems)


def test_rehashed_edit_still_breaks_the_next_link() -> None:
    # an attacker who recomputes the edited record's hash still breaks the following record's prev_hash
    recs = chain_of(4)
    recs[1]["tenant"] = "evil"
    recs[1]["hash"] = record_hash(recs[1])
    report = verify_records(recs)
    assert any("seq 3" in p and "prev_hash" in p for p in report.problems)


def test_interleaved_writers_verify_independently() -> None:
    a, b = chain_of(3, "a"), chain_of(3, "b")
    mixed = [a[0], b[0], b[1], a[1], a[2], b[2]]
    assert verify_records(mixed).ok


def test_anchors_allow_retention_prefix_and_catch_tail_removal() -> None:
    recs = chain_of(6)
    kept = recs[2:]  # retention dropped seq 1..2
    anchors = {"w1": Anchor(2, recs[1]["hash"], 6, recs[5]["hash"])}
    assert verify_records(copy.deepcopy(kept), anchors).ok
    assert not verify_records(copy.deepcopy(kept)).ok  # without the anchor the cut is a gap
    # removing the newest record is caught against the recorded head
    report = verify_records(copy.deepcopy(kept[:-1]), anchors)
    assert any("missing at the end" in p for p in report.problems)
    # removing every record of a writer is caught too
    assert not verify_records([], anchors).ok


def _write(path: Path, recs: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))


def test_verify_cli_on_jsonl_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    recs = chain_of(4)
    _write(path, recs)
    assert main(["audit", "verify", "--file", str(path)]) == 0
    assert "4 record(s) from 1 writer(s): ok" in capsys.readouterr().out
    edited = copy.deepcopy(recs)
    edited[3]["arguments"] = {"a": 99}
    _write(path, edited)
    assert main(["audit", "verify", "--file", str(path)]) == 1
    assert "altered" in capsys.readouterr().out
    _write(path, recs[:2] + recs[3:])
    assert main(["audit", "verify", "--file", str(path)]) == 1
    assert "missing" in capsys.readouterr().out
    path.write_bytes(path.read_bytes() + b"{not json\n")
    assert main(["audit", "verify", "--file", str(path)]) == 1


def test_records_without_a_chain_head_are_reported_when_heads_are_required() -> None:
    recs = chain_of(3)
    assert verify_records(copy.deepcopy(recs)).ok  # a file has no heads
    report = verify_records(copy.deepcopy(recs), {}, require_heads=True)
    assert any("no chain head" in p for p in report.problems)
