"""One measurement of one target: runs the load generator as its own process and reads its JSON result."""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import PYTHON, ROOT
from tests.perf.stats import (
    ProcKey,
    TickDeltas,
    cpu_budget_per_request,
    parse_machine_busy_ticks,
    parse_proc_cpu_ticks,
    parse_proc_stat_entry,
    parse_vmrss_kib,
    rss_per_stream,
)
from tests.perf.targets import Target, process_group

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children (gateway, loadgen) inherit it
    return hard


def rss_kib(pid: int) -> int:
    return parse_vmrss_kib(Path(f"/proc/{pid}/status").read_text())


def run_loadgen(args: list[str], timeout: float) -> dict[str, Any]:
    argv = [PYTHON, "-m", "tests.perf.loadgen", *args]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"load generator timed out after {timeout:.0f}s"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"error": f"load generator exit {res.returncode}: {res.stderr.strip()[-500:]}"}
    out: dict[str, Any] = orjson.loads(lines[-1])
    return out


def header_args(t: Target) -> list[str]:
    return [a for k, v in t.headers.items() for a in ("--header", f"{k}: {v}")]


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes have used so far; processes that are gone count 0."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            ticks += parse_proc_cpu_ticks(Path(f"/proc/{pid}/stat").read_text())
    return ticks / _CLK_TCK


# the shared servers of the Redis + PostgreSQL target, by /proc/<pid>/comm (the executable's name, which a
# PostgreSQL backend keeps whatever its process title says)
BACKEND_COMMS = {"redis-server": "redis", "postgres": "postgres", "postmaster": "postgres"}
SAMPLE_INTERVAL_S = 0.2


class BackendSampler:
    """CPU ticks used by every redis-server and PostgreSQL process, and by the whole machine, while it runs.

    /proc is scanned every `interval` seconds in a background thread, so PostgreSQL backends that start and exit
    during the measurement are counted (see TickDeltas: a process that exits loses at most one interval). Processes
    of any other name are remembered and skipped, so a scan reads little more than the /proc directory."""

    def __init__(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.interval = interval
        self.deltas = {kind: TickDeltas() for kind in sorted(set(BACKEND_COMMS.values()))}
        self._skip: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-budget-sampler", daemon=True)
        self.machine_first = self.machine_last = 0

    def sample(self) -> None:
        samples: dict[str, dict[ProcKey, int]] = {kind: {} for kind in self.deltas}
        listed = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        self._skip &= listed  # a pid gone since the last scan may come back as a new process
        for pid in sorted(listed - self._skip):
            with contextlib.suppress(OSError, ValueError, IndexError):
                comm, key, ticks = parse_proc_stat_entry(Path(f"/proc/{pid}/stat").read_text())
                kind = BACKEND_COMMS.get(comm)
                if kind is None:
                    self._skip.add(key[0])
                    continue
                samples[kind][key] = ticks
        for kind, sample in samples.items():
            self.deltas[kind].observe(sample)
        busy = parse_machine_busy_ticks(Path("/proc/stat").read_text())
        self.machine_first = self.machine_first or busy
        self.machine_last = busy

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> BackendSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()

    def seconds(self, kind: str) -> float:
        return self.deltas[kind].total() / _CLK_TCK

    def machine_seconds(self) -> float:
        return (self.machine_last - self.machine_first) / _CLK_TCK


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


LOOP_LAG_FIGURES = {
    "mcp_gateway_event_loop_lag_max_seconds": "loop_lag_max_ms",
    "mcp_gateway_event_loop_stall_max_seconds": "loop_stall_max_ms",
}


def read_loop_lag(url: str) -> dict[str, float] | None:
    """The longest loop lag and stall since the previous read (the read resets them) and the probe's sample count;
    None when the target does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return parse_loop_lag(resp.read().decode())
    except OSError:
        return None


def parse_loop_lag(text: str) -> dict[str, Any]:
    """`loop_lag_max_ms`, `loop_stall_max_ms` and `loop_lag_samples` from Prometheus text (what is there), and the
    gateway's loop holds (gateway/loophold.py): `loop_hold_max_ms`, the longest single hold by a background task or
    a GC collection, with its `loop_hold_holder`, and `loop_holds_ms` {holder: longest hold}."""
    out: dict[str, Any] = {}
    holds: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = LOOP_LAG_FIGURES.get(sample.name)
            if key is not None:
                out[key] = max(out.get(key, 0.0), sample.value * 1e3)  # with workers: one sample per process
            elif sample.name == "mcp_gateway_event_loop_hold_max_seconds":
                holder = sample.labels.get("holder", "")
                holds[holder] = max(holds.get(holder, 0.0), round(sample.value * 1e3, 3))
            elif sample.name == "mcp_gateway_event_loop_lag_seconds_count":
                out["loop_lag_samples"] = out.get("loop_lag_samples", 0.0) + sample.value
    if holds:
        holder = max(holds, key=holds.__getitem__)
        out["loop_hold_max_ms"] = holds[holder]
        out["loop_hold_holder"] = holder
        out["loop_holds_ms"] = holds
    return out


# the JSON scenario's load generator (a mode of tests/perf/loadgen.py): `json-wrk` (wrk, C) or `json` (Python,
# aiohttp); tests/perf/bench.py sets it from --loadgen
JSON_LOADGEN = {"mode": "json"}


def use_loadgen(name: str) -> None:
    JSON_LOADGEN["mode"] = "json-wrk" if name == "wrk" else "json"


def measure_json(
    t: Target,
    conns: int,
    duration: float,
    warmup: float,
    *,
    cpu_budget: bool = False,
    upstream_pid: int | None = None,
    reload: bool = False,
) -> dict[str, Any]:
    """Throughput and latency, plus the target's own CPU time per request (a figure a busy machine barely moves:
    it is what the target costs, not how much CPU it managed to get).

    With `cpu_budget`, also the CPU per request of every process on the machine (`cpu_budget_us_per_request`):
    the target, the load generator, the upstream (`upstream_pid`; None for the upstream itself), the redis-server
    and PostgreSQL processes, the machine's total and the rest (`other`: the bench itself, idle targets, the
    system). The load generator counts from its first request; the machine total leaves out its start and exit.

    A target with a loop-lag probe (`lag_url`) also reports the longest event-loop lag and stall during the run
    (`loop_lag_max_ms`, `loop_stall_max_ms`: read before the run, which resets them, and after). With `reload`, a
    gateway gets SIGHUP in the middle of the measured window: a policy reload is part of what the run holds."""
    mode = JSON_LOADGEN["mode"]
    args = [mode, t.json_url, "--conns", str(conns), "--duration", str(duration), "--warmup", str(warmup)]
    # the target's process group: a gateway's supervisor and workers, or the single process
    pids = process_group(t.pid) if t.pid is not None else []
    upstream = [upstream_pid] if upstream_pid is not None and upstream_pid not in pids else []
    sampler = BackendSampler() if cpu_budget else None
    children_before = _children_cpu_s()
    up_before = cpu_seconds(upstream)
    before = cpu_seconds(pids)
    lag_before = read_loop_lag(t.lag_url) if t.lag_url else None
    hup: threading.Timer | None = None
    reloaded = threading.Event()
    if reload and t.gateway is not None and t.pid is not None:
        pid = t.pid

        def send_hup() -> None:
            os.kill(pid, signal.SIGHUP)
            reloaded.set()

        # the load generator starts within a fraction of a second; the reload then falls in the measured window
        hup = threading.Timer(0.3 + warmup + duration / 2, send_hup)
        hup.start()
    try:
        with sampler or contextlib.nullcontext():
            res = run_loadgen(args + header_args(t), timeout=duration + warmup + 60)
    finally:
        if hup is not None:
            hup.cancel()
    if lag_before is not None and t.lag_url:
        lag = read_loop_lag(t.lag_url)
        if lag is not None:
            res.update(lag)
            res["loop_lag_samples"] = lag.get("loop_lag_samples", 0.0) - lag_before.get("loop_lag_samples", 0.0)
    if hup is not None:
        res["policy_reloads"] = 1 if reloaded.is_set() else 0
    used = cpu_seconds(pids) - before
    up_used = cpu_seconds(upstream) - up_before
    loadgen_process_s = _children_cpu_s() - children_before
    if "error" not in res and res.get("served"):
        served = int(res["served"])
        res["cpu_us_per_request"] = used / served * 1e6
        if sampler is not None and res.get("cpu_s") is not None:
            loadgen_s = float(res["cpu_s"])
            # the load generator's interpreter start and exit are not per-request work: out of the machine total
            machine_s = sampler.machine_seconds() - max(0.0, loadgen_process_s - loadgen_s)
            parts: dict[str, float | None] = {
                "target": used,
                "loadgen": loadgen_s,
                "upstream": up_used if upstream else None,
                "redis": sampler.seconds("redis"),
                "postgres": sampler.seconds("postgres"),
            }
            res["cpu_budget_us_per_request"] = cpu_budget_per_request(parts, machine_s, served)
            res["cpu_budget_notes"] = {
                "loadgen_process_cpu_s": loadgen_process_s,
                "backend_processes_seen": {k: d.processes() for k, d in sampler.deltas.items()},
                "samples": sampler.deltas["redis"].samples,
            }
    return res


def measure_sse(t: Target, events: int, deadline: float) -> dict[str, Any]:
    args = ["sse", t.tick_url, "--events", str(events), "--deadline", str(deadline)]
    return run_loadgen(args + header_args(t), timeout=deadline + 30)


def measure_idle_streams(t: Target, streams: int, settle: float) -> dict[str, Any]:
    """RSS of t.pid before and while the load generator holds `streams` idle SSE streams through it."""
    assert t.pid is not None
    before = rss_kib(t.pid)
    argv = [PYTHON, "-m", "tests.perf.loadgen", "idle", t.json_url, "--streams", str(streams), *header_args(t)]
    argv += ["--hold-max", "300"]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, start_new_session=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    result: dict[str, Any] = {"requested": streams, "rss_before_kib": before}
    try:
        deadline = time.monotonic() + 60 + streams / 50
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
            elif proc.poll() is not None:
                break
        if not line.endswith(b"\n"):
            err = proc.stderr.read().decode(errors="replace")[-500:] if proc.poll() is not None and proc.stderr else ""
            result["error"] = f"streams were not all opened in time {err}".strip()
            return result
        opened = orjson.loads(line)
        result.update(opened)
        time.sleep(settle)  # let the allocator and lazily created buffers settle
        after = rss_kib(t.pid)
        result["rss_after_kib"] = after
        if opened["ready"] > 0:
            per = rss_per_stream(before, after, int(opened["ready"]))
            result["kib_per_stream"] = per
            result["projected_10k_mib"] = (before + per * 10_000) / 1024
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(5)
    return result
