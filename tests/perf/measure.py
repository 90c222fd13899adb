"""One measurement of one target: runs the load generator as its own process and reads its JSON result."""

from __future__ import annotations

import contextlib
import os
import resource
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from tests.harness import PYTHON, ROOT
from tests.perf.stats import parse_proc_cpu_ticks, parse_vmrss_kib, rss_per_stream
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


def measure_json(t: Target, conns: int, duration: float, warmup: float) -> dict[str, Any]:
    """Throughput and latency, plus the target's own CPU time per request (a figure a busy machine barely moves:
    it is what the target costs, not how much CPU it managed to get)."""
    args = ["json", t.json_url, "--conns", str(conns), "--duration", str(duration), "--warmup", str(warmup)]
    # the target's process group: a gateway's supervisor and workers, or the single process
    pids = process_group(t.pid) if t.pid is not None else []
    before = cpu_seconds(pids)
    res = run_loadgen(args + header_args(t), timeout=duration + warmup + 60)
    used = cpu_seconds(pids) - before
    if "error" not in res and res.get("served"):
        res["cpu_us_per_request"] = used / int(res["served"]) * 1e6
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
