"""Sampling profile of a running gateway with py-spy, reduced to the top functions by share of samples."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_LINE_NO = re.compile(r":\d+\)$")


def find_py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def _frame_key(frame: str) -> str:
    """'handle (aiohttp/web_protocol.py:512)' -> 'handle (aiohttp/web_protocol.py)': aggregate per function."""
    return _LINE_NO.sub(")", frame.strip())


def parse_collapsed(text: str) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed ('raw') stacks.

    With `--threads` each stack starts with `thread (tid): name`; samples are then also counted per thread, and the
    main thread (the event loop, which bounds a single worker's throughput) gets its own self-time counter.
    """
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    thread_counts: Counter[str] = Counter()
    main_self: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f.strip()]
        thread = ""
        if frames and frames[0].startswith("thread ("):
            thread = frames.pop(0).partition(": ")[2] or "?"
        frames = [_frame_key(f) for f in frames]
        if not frames:
            continue
        total += count
        if thread:
            thread_counts[thread] += count
        self_counts[frames[-1]] += count
        if thread == "MainThread":
            main_self[frames[-1]] += count
        for f in set(frames):
            incl_counts[f] += count
    return {
        "samples": total,
        "self": self_counts,
        "inclusive": incl_counts,
        "threads": thread_counts,
        "main_self": main_self,
    }


def top(counts: Counter[str], total: int, n: int) -> list[dict[str, Any]]:
    return [{"function": f, "share": c / total if total else 0.0} for f, c in counts.most_common(n)]


def record(py_spy: str, pid: int, seconds: float, out: Path, rate: int = 250) -> tuple[bool, str]:
    """Run `py-spy record` (collapsed format) against pid; returns (ok, message)."""
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate)]
    argv += ["--format", "raw", "--output", str(out), "--nonblocking", "--threads"]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    except subprocess.TimeoutExpired:
        return False, "py-spy did not finish in time"
    if res.returncode != 0 or not out.exists():
        return False, f"py-spy exit {res.returncode}: {(res.stderr or res.stdout)[-400:]}"
    return True, "ok"
