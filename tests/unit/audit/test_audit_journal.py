"""The audit journal's writer side (acknowledgements, rotation) and recovery: untested before the review, since
the SIGKILL test holds the writer back and so never writes a `done` line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.audit import journal as journal_module
from gateway.audit.journal import AuditJournal
from tests.unit.audit.test_audit_pipeline import CALL, make_ctx

pytestmark = pytest.mark.unit


def answered(journal: AuditJournal, n: int) -> list[int]:
    refs = []
    for i in range(n):
        ctx = make_ctx(CALL, request_id=f"r{i}")
        journal.note(ctx, 200)
        journal.flush()
        assert ctx.audit_ref is not None
        refs.append(ctx.audit_ref)
    return refs


def test_recovery_returns_exactly_the_answers_without_a_durable_record(tmp_path: Path) -> None:
    dead = AuditJournal(tmp_path, "dead")
    dead.open()
    refs = answered(dead, 40)
    dead.acked(refs[:30])  # 30 records reached the sink: only 10 are owed
    # the process dies here (no close): a new one recovers what it left
    heir = AuditJournal(tmp_path, "heir")
    heir.open()
    events = heir.recover(lambda token: token == "heir")
    assert sorted(e.request_id for e in events) == sorted(f"r{i}" for i in range(30, 40))
    assert all((e.notes or {}).get("recovered") == journal_module.RECOVERED_NOTE for e in events)
    # what was claimed is journaled as the heir's own until its records are written
    assert not any(p.name.startswith("dead.") for p in tmp_path.iterdir())


def test_rotation_carries_open_lines_and_is_not_repeated_for_every_ack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 4096)
    journal = AuditJournal(tmp_path, "me")
    journal.open()
    stuck = answered(journal, 40)  # never acknowledged (their records were dropped): far more than 4 KiB open
    segments = []
    for _ in range(50):
        refs = answered(journal, 1)
        journal.acked(refs)
        segments.append(journal._segment)
    # a rotation rewrites the open lines; with more open than ROTATE_BYTES it used to happen on every ack
    assert len(set(segments)) < 10, segments
    # after any number of rotations the stuck answers are still recoverable, the acknowledged ones are not
    heir = AuditJournal(tmp_path, "heir")
    heir.open()
    events = heir.recover(lambda token: token == "heir")
    assert len(events) == len(stuck)
