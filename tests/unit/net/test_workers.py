"""The worker supervisor's restart policy and how a drain judges its workers' exits (gateway/net/workers.py).

The drain tests use real child processes (a sleeping interpreter stands in for a worker that is still starting):
what is under test is how the supervisor reads an exit status, which only a real process gives."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.net.workers import (
    MAX_BACKOFF_SECONDS,
    MAX_FAILED_STARTS,
    MIN_HEALTHY_SECONDS,
    Supervisor,
    restart_policy,
    stopped_cleanly,
)
from gateway.settings import Settings


def test_a_worker_that_lived_long_enough_restarts_at_once_and_clears_its_failures() -> None:
    assert restart_policy(3, MIN_HEALTHY_SECONDS + 1) == (0, 0.5)


def test_failed_starts_back_off_exponentially_up_to_the_cap() -> None:
    failed, backoffs = 0, []
    for _ in range(MAX_FAILED_STARTS - 1):
        failed, backoff = restart_policy(failed, 0.1)
        assert backoff is not None
        backoffs.append(backoff)
    assert backoffs == [min(MAX_BACKOFF_SECONDS, 0.5 * 2**i) for i in range(MAX_FAILED_STARTS - 1)]
    assert backoffs == sorted(backoffs) and backoffs[0] < backoffs[-1]


def test_the_supervisor_gives_up_after_max_failed_starts_in_a_row() -> None:
    failed, backoff = restart_policy(MAX_FAILED_STARTS - 1, 0.1)
    assert failed == MAX_FAILED_STARTS and backoff is None


def test_backoff_never_exceeds_the_cap() -> None:
    for failed in range(MAX_FAILED_STARTS - 1):
        _, backoff = restart_policy(failed, 0.0)
        assert backoff is not None and backoff <= MAX_BACKOFF_SECONDS


@pytest.mark.parametrize(
    ("code", "asked", "clean"),
    [
        (0, True, True),
        (0, False, True),
        (-signal.SIGTERM, True, True),  # SIGTERMed before its handler was installed
        (-signal.SIGTERM, False, False),  # someone else's SIGTERM: not the drain's
        (-signal.SIGKILL, True, False),
        (1, True, False),
    ],
)
def test_stopped_cleanly(code: int, asked: bool, clean: bool) -> None:
    assert stopped_cleanly(code, asked) is clean


def _supervisor(tmp_path: Path, workers: int) -> Supervisor:
    settings = Settings.model_validate({"workers": workers, "http": {"shutdown_grace_seconds": 5}})
    return Supervisor(settings, tmp_path)


def _child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_drain_counts_a_worker_killed_by_its_sigterm_while_starting_as_a_clean_stop(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, 2)
    # no SIGTERM handler: the default action kills it, as it does a worker whose interpreter is still starting
    for w in sup.workers:
        w.proc = _child("import time; time.sleep(60)")
    assert sup._wait_stopped() == 0
    assert all(w.proc is not None and w.proc.returncode == -signal.SIGTERM for w in sup.workers)


def test_a_drain_still_fails_on_a_worker_that_exits_with_an_error(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, 2)
    sup.workers[0].proc = _child("import time; time.sleep(60)")
    sup.workers[1].proc = _child("import sys; sys.exit(3)")
    sup.workers[1].proc.wait()
    assert sup._wait_stopped() == 1
