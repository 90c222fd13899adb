"""Statistics of the benchmark: percentiles, medians across rounds, ratios. Pure functions, unit-tested."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks; NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    if lo == hi:
        return float(data[lo])
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def median(values: Iterable[float]) -> float:
    """Median of the finite values (NaN when there are none): rounds that failed do not drag it."""
    finite = [v for v in values if not math.isnan(v)]
    return percentile(finite, 50.0) if finite else math.nan


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when either is missing or the denominator is zero."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


def summarize_latencies(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / max in milliseconds of latencies given in seconds."""
    ms = [v * 1000.0 for v in latencies_s]
    return {
        "p50_ms": percentile(ms, 50.0),
        "p99_ms": percentile(ms, 99.0),
        "max_ms": max(ms) if ms else math.nan,
    }


def median_of_rounds(rounds: Sequence[Mapping[str, float]], keys: Iterable[str]) -> dict[str, float]:
    """Per key, the median across rounds of that key's value (missing in a round = not counted)."""
    return {k: median([r[k] for r in rounds if k in r]) for k in keys}


def rss_per_stream(rss_before_kib: int, rss_after_kib: int, streams: int) -> float:
    """Resident memory added per held stream, in KiB."""
    if streams <= 0:
        raise ValueError("streams must be positive")
    return (rss_after_kib - rss_before_kib) / streams


def parse_vmrss_kib(status_text: str) -> int:
    """VmRSS (KiB) from the text of /proc/<pid>/status."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1])
    raise ValueError("no VmRSS line in /proc status text")


def fmt(value: float | None, digits: int = 2) -> str:
    """A table cell: fixed digits, '-' for a missing figure (NaN here, null once read back from JSON)."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def parse_proc_cpu_ticks(stat_text: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/<pid>/stat (the command name may hold spaces)."""
    fields = stat_text[stat_text.rindex(")") + 2 :].split()
    # fields[0] is the state (field 3 of the man page); utime and stime are fields 14 and 15
    return int(fields[11]) + int(fields[12])
