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
    """p50 / p99 / p99.9 / max in milliseconds of latencies given in seconds."""
    ms = sorted(v * 1000.0 for v in latencies_s)
    return {
        "p50_ms": percentile(ms, 50.0),
        "p99_ms": percentile(ms, 99.0),
        "p999_ms": percentile(ms, 99.9),
        "max_ms": ms[-1] if ms else math.nan,
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


# ------------------------------------------------------------------ CPU budget: every process on the machine

ProcKey = tuple[int, int]  # (pid, start time in ticks since boot): a reused pid is a new process


def parse_proc_stat_entry(stat_text: str) -> tuple[str, ProcKey, int]:
    """(command name, (pid, start time), utime + stime ticks) from the text of /proc/<pid>/stat."""
    open_at, close_at = stat_text.index("("), stat_text.rindex(")")
    pid = int(stat_text[:open_at])
    comm = stat_text[open_at + 1 : close_at]
    fields = stat_text[close_at + 2 :].split()
    # fields[0] is field 3 of the man page (state): utime 14, stime 15, starttime 22
    return comm, (pid, int(fields[19])), int(fields[11]) + int(fields[12])


def parse_machine_busy_ticks(proc_stat_text: str) -> int:
    """Ticks all CPUs spent busy (not idle, not iowait) since boot, from the `cpu` line of /proc/stat.

    guest time is already counted in user time, so it is not added again."""
    for line in proc_stat_text.splitlines():
        if line.startswith("cpu "):
            vals = [int(v) for v in line.split()[1:]]
            user, nice, system, _idle, _iowait, irq, softirq = vals[:7]
            steal = vals[7] if len(vals) > 7 else 0
            return user + nice + system + irq + softirq + steal
    raise ValueError("no cpu line in /proc/stat text")


class TickDeltas:
    """CPU ticks used by a changing set of processes between the first sample and the last one.

    A process present in the first sample counts from its value there; one that appears later started during the
    measurement and counts from zero. A process keeps the last value seen: one that exits between two samples loses
    what it used since the previous sample (at most one interval), one that starts and exits between two samples is
    not seen at all."""

    def __init__(self) -> None:
        self.first: dict[ProcKey, int] = {}
        self.last: dict[ProcKey, int] = {}
        self.samples = 0

    def observe(self, sample: Mapping[ProcKey, int]) -> None:
        for key, ticks in sample.items():
            if key not in self.last:
                self.first[key] = ticks if self.samples == 0 else 0
            self.last[key] = max(ticks, self.last.get(key, 0))
        self.samples += 1

    def total(self) -> int:
        return sum(self.last[k] - self.first[k] for k in self.last)

    def processes(self) -> int:
        return len(self.last)


def cpu_budget_per_request(
    seconds: Mapping[str, float | None], machine_total_s: float | None, served: int
) -> dict[str, float | None]:
    """us of CPU per request for each named part, the machine total, and `other` (the total minus the parts);
    a part that was not measured is None."""
    if served <= 0:
        raise ValueError("served must be positive")
    out: dict[str, float | None] = {k: None if v is None else v / served * 1e6 for k, v in seconds.items()}
    total = None if machine_total_s is None else machine_total_s / served * 1e6
    parts = sum(v for v in out.values() if v is not None)
    out["machine_total"] = total
    out["other"] = None if total is None else total - parts
    return out


def throughput_bounds(total_us: float | None, target_us: float | None, cpus: int) -> tuple[float, float]:
    """(machine bound, single-thread bound) in req/s: `cpus` cores divided by the CPU all processes use per request,
    and one core divided by the target's own CPU per request; NaN when a figure is missing or zero."""
    machine = cpus * 1e6 / total_us if total_us else math.nan
    single = 1e6 / target_us if target_us else math.nan
    return machine, single
