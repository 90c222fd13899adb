"""`workers: N`: a small supervisor running N gateway processes on one port (SO_REUSEPORT).

Design note (hand-written process code):
  * Replaces running N gateway processes under an external supervisor (systemd units, one container each) when one
    host should use several cores; `workers: 1` (the default) runs no supervisor at all.
  * Measured gain: two workers gave 0.92-0.99x the throughput of one on the 2-core development machine, where the
    load generator, upstream, Redis and PostgreSQL share the cores (docs/benchmark.md); the gain needs idle cores.
  * Invariants: every worker gets the exact settings the supervisor was given; `/metrics` of any worker shows the
    totals of all (one multiprocess directory, a dead worker's live gauges removed); a worker dying is restarted
    with a backoff, and repeated failures right after start stop everything (`restart_policy`); a drain exits 0
    when every worker stopped cleanly, a worker killed by the drain's own SIGTERM before its handler existed
    included (`stopped_cleanly`).
  * Obsolete where an orchestrator runs one process per container (Kubernetes replicas share Redis the same way).

The kernel spreads new connections over the N listening sockets. The supervisor:
  - creates a fresh PROMETHEUS_MULTIPROC_DIR for the workers' metric files, so `/metrics` from any worker shows
    totals over all of them (gateway/metrics.py), and removes it at exit;
  - starts each worker as `python -m gateway.net.workers` with the exact settings it was given (CLI overrides
    included) and its index in the environment;
  - restarts a worker that dies (with a backoff; it gives up when workers keep dying right after starting, which
    means a configuration problem, not a crash) and marks the dead process in the metric files so its live
    gauges stop counting;
  - forwards SIGHUP (policy reload) to every worker, and on SIGTERM/SIGINT asks every worker to drain and waits
    for them (killing stragglers after the grace period plus a margin).

Each worker is a complete gateway: state that must be shared (rate limits, breakers, sessions) is shared through
Redis exactly as it is between replicas; without Redis each worker has its own in-process state (see
docs/operations.md). Each worker keeps its own audit spool file (worker 0 the configured `spool_path`, worker i
`<spool_path>.w<i>`), since a spool is replayed by the process that owns it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import structlog
from prometheus_client import multiprocess

from gateway.metrics import MULTIPROC_ENV, WORKER_INDEX_ENV
from gateway.settings import Settings

log = structlog.get_logger("gateway.net.workers")

SETTINGS_ENV = "MGW_WORKER_SETTINGS"
SUPERVISOR_PID_ENV = "MGW_SUPERVISOR_PID"
# a worker that dies sooner than this after starting counts as a failed start
MIN_HEALTHY_SECONDS = 5.0
MAX_FAILED_STARTS = 5
MAX_BACKOFF_SECONDS = 10.0
# on top of http.shutdown_grace_seconds, before stragglers are killed
STOP_MARGIN_SECONDS = 10.0
POLL_SECONDS = 0.1


def is_worker() -> bool:
    return WORKER_INDEX_ENV in os.environ and SETTINGS_ENV in os.environ


def worker_spool_path(spool_path: str, index: int) -> str:
    """Worker 0 keeps the configured path, so going back to `workers: 1` still replays its spool."""
    if index == 0:
        return spool_path
    p = Path(spool_path)
    return str(p.with_name(f"{p.name}.w{index}"))


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failed_starts: int = 0
    restart_at: float | None = None
    asked_to_stop: bool = False


class Supervisor:
    def __init__(self, settings: Settings, metrics_dir: Path) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir
        self.workers = [Worker(i) for i in range(settings.workers)]
        self._settings_json = settings.model_dump_json()
        self._stopping = False
        self._failed = False

    # ------------------------------------------------------------------ processes

    def _env(self, index: int) -> dict[str, str]:
        env = dict(os.environ)
        env[MULTIPROC_ENV] = str(self.metrics_dir)
        env[WORKER_INDEX_ENV] = str(index)
        env[SETTINGS_ENV] = self._settings_json
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        return env

    def _spawn(self, worker: Worker) -> None:
        worker.proc = subprocess.Popen([sys.executable, "-m", "gateway.net.workers"], env=self._env(worker.index))
        worker.started = time.monotonic()
        worker.restart_at = None
        worker.asked_to_stop = False
        log.info("worker started", worker=worker.index, pid=worker.proc.pid)

    def _mark_dead(self, pid: int) -> None:
        multiprocess.mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        # gauges in the default "all" mode (one series per pid) describe live state too (open streams, queue
        # depth): a dead worker's last values would otherwise stay in /metrics forever
        for f in self.metrics_dir.glob(f"gauge_all_{pid}.db"):
            with contextlib.suppress(OSError):
                f.unlink()

    def _reap(self, worker: Worker) -> None:
        proc = worker.proc
        if proc is None or proc.poll() is None:
            return
        code = proc.returncode
        worker.proc = None
        self._mark_dead(proc.pid)
        if self._stopping:
            return
        worker.failed_starts, backoff = restart_policy(worker.failed_starts, time.monotonic() - worker.started)
        if backoff is None:
            log.error("worker keeps failing at start; stopping", worker=worker.index, exit_code=code)
            self._failed = True
            self._begin_stop(signal.SIGTERM)
            return
        worker.restart_at = time.monotonic() + backoff
        log.warning("worker died; restarting", worker=worker.index, pid=proc.pid, exit_code=code, backoff=backoff)

    # ------------------------------------------------------------------ signals

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._begin_stop(signal.SIGTERM)

    def _on_hup(self, signum: int, _frame: FrameType | None) -> None:
        log.info("SIGHUP: asking every worker to reload its policy")
        self._send_all(signal.SIGHUP)

    def _begin_stop(self, sig: int) -> None:
        if not self._stopping:
            log.info("stopping workers")
        self._stopping = True
        self._send_all(sig)

    def _send_all(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)
                if sig == signal.SIGTERM:
                    w.asked_to_stop = True

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        for w in self.workers:
            self._spawn(w)
        while not self._stopping:
            now = time.monotonic()
            for w in self.workers:
                self._reap(w)
                if not self._stopping and w.proc is None and w.restart_at is not None and now >= w.restart_at:
                    self._spawn(w)
            time.sleep(POLL_SECONDS)
        return self._wait_stopped()

    def _wait_stopped(self) -> int:
        # a worker being spawned when the stop signal arrived was not there to receive it
        for w in self.workers:
            if w.proc is not None and not w.asked_to_stop and w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)
                w.asked_to_stop = True
        deadline = time.monotonic() + self.settings.http.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        codes: list[int] = []
        ok = not self._failed
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                code = w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker did not stop in time; killing it", worker=w.index, pid=w.proc.pid)
                w.proc.kill()
                code = w.proc.wait()
                ok = False
            codes.append(code)
            ok = ok and stopped_cleanly(code, w.asked_to_stop)
        log.info("all workers stopped", exit_codes=codes)
        return 0 if ok else 1


def restart_policy(failed_starts: int, lived: float) -> tuple[int, float | None]:
    """After a worker died `lived` seconds after its start: the count of failed starts in a row, and how long to
    wait before starting it again (None: give up, the configuration is at fault rather than a crash)."""
    failed = failed_starts + 1 if lived < MIN_HEALTHY_SECONDS else 0
    if failed >= MAX_FAILED_STARTS:
        return failed, None
    return failed, min(MAX_BACKOFF_SECONDS, 0.5 * (2 ** max(0, failed - 1)))


def stopped_cleanly(code: int, asked_to_stop: bool) -> bool:
    """A worker's exit during a drain: 0, or killed by the SIGTERM it was sent before its interpreter had installed
    the handler (a worker still starting has nothing to drain, so that is a clean stop too)."""
    return code == 0 or (asked_to_stop and code == -signal.SIGTERM)


def supervise(settings: Settings) -> int:
    if settings.listen.port == 0:
        log.error("workers > 1 needs a fixed listen.port (each worker would pick its own port)")
        return 2
    metrics_dir = Path(tempfile.mkdtemp(prefix="mgw-metrics-"))
    try:
        return Supervisor(settings, metrics_dir).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _die_with_supervisor() -> None:
    """Linux: get SIGTERM when the supervisor dies, so a killed supervisor leaves no orphans holding the port."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    if expected is not None and str(os.getppid()) != expected:
        # the supervisor died before prctl took effect
        sys.exit(1)


def _stop_while_starting(signum: int, _frame: FrameType | None) -> None:
    # asked to stop before the server is up (it replaces this handler once listening): nothing to drain
    sys.exit(0)


def worker_main() -> int:
    signal.signal(signal.SIGTERM, _stop_while_starting)
    signal.signal(signal.SIGINT, _stop_while_starting)
    # imported only now: importing the server takes seconds on a busy machine, and a SIGTERM during that time must
    # find the handler above (a worker killed by the default action exits -15 and is counted as a crash)
    from gateway.server import run  # noqa: PLC0415

    _die_with_supervisor()
    index = int(os.environ[WORKER_INDEX_ENV])
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    audit = settings.audit.model_copy(update={"spool_path": worker_spool_path(settings.audit.spool_path, index)})
    settings = settings.model_copy(update={"audit": audit})
    # every log line of this process says which worker wrote it
    structlog.contextvars.bind_contextvars(worker=index)
    return run(settings)


if __name__ == "__main__":
    sys.exit(worker_main())
