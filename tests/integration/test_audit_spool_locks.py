"""Spool lock files of processes that were killed: removed by the next process, never those of live owners."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.audit.spool import AuditSpool

pytestmark = pytest.mark.integration

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from gateway.audit.spool import AuditSpool
    spool = AuditSpool(Path(sys.argv[1]))
    spool.open()
    print(spool.token, flush=True)
    time.sleep(120)
    """
)


def start_holder(base: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(base)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2]
    )
    assert proc.stdout is not None
    token = proc.stdout.readline().strip()
    assert token, "the holder did not open its spool"
    return proc, token


def test_the_lock_of_a_killed_process_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    base = tmp_path / "spool.jsonl"
    killed, dead_token = start_holder(base)
    live, live_token = start_holder(base)
    try:
        killed.send_signal(signal.SIGKILL)  # no close(): its lock file stays on disk with nothing spooled
        killed.wait(10)
        dead_lock = tmp_path / f"spool.jsonl.{dead_token}.lock"
        live_lock = tmp_path / f"spool.jsonl.{live_token}.lock"
        assert dead_lock.exists() and live_lock.exists()
        newcomer = AuditSpool(base)
        assert newcomer.open() == 0  # nothing to adopt: neither had spooled records
        try:
            assert not dead_lock.exists()
            assert live_lock.exists()  # its owner still holds the flock
            assert sorted(os.listdir(tmp_path)) == sorted([live_lock.name, f"spool.jsonl.{newcomer.token}.lock"])
        finally:
            newcomer.close()
    finally:
        for proc in (killed, live):
            proc.kill()
            proc.wait(10)


def test_worker_spools_and_journal_directories_are_never_adopted(tmp_path: Path) -> None:
    """Worker n spools under `<spool>.w<n>` and journals in `<spool>[.w<n>]-journal/`: worker 0, whose names are
    `<spool>.<token>...`, must not take them for orphans of its own (it adopted worker 1's live spool and tried to
    replay a journal directory)."""
    base = tmp_path / "spool.jsonl"
    worker1 = AuditSpool(tmp_path / "spool.jsonl.w1")
    worker1.open()
    try:
        (tmp_path / "spool.jsonl.w1-journal").mkdir()
        (tmp_path / "spool.jsonl-journal").mkdir()
        worker1.path.write_text('{"id": "r1"}\n')
        worker0 = AuditSpool(base)
        assert worker0.open() == 0
        try:
            assert worker1.path.exists() and (tmp_path / "spool.jsonl.w1-journal").is_dir()
        finally:
            worker0.close()
    finally:
        worker1.close()
