"""The benchmark's statistics and profile reduction (pure functions; no processes, no timing)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.perf.profile import parse_collapsed, top
from tests.perf.report import check_issue_targets, per_round_ratios, summarize
from tests.perf.stats import (
    fmt,
    median,
    parse_proc_cpu_ticks,
    parse_vmrss_kib,
    percentile,
    ratio,
    rss_per_stream,
    summarize_latencies,
)
from tests.perf.targets import commands_delta, redis_commands

pytestmark = pytest.mark.unit


def test_percentile_interpolates_between_closest_ranks() -> None:
    data = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(data, 0) == 1.0
    assert percentile(data, 100) == 4.0
    assert percentile(data, 50) == pytest.approx(2.5)
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_percentile_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_median_ignores_failed_rounds() -> None:
    assert median([3.0, math.nan, 1.0, 2.0]) == 2.0
    assert math.isnan(median([math.nan]))
    assert math.isnan(median([]))


def test_ratio_and_missing_figures() -> None:
    assert ratio(900.0, 1000.0) == pytest.approx(0.9)
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 1.0))
    assert fmt(math.nan) == "-"
    assert fmt(None) == "-"  # NaN comes back from JSON as null
    assert fmt(0.91234, 3) == "0.912"


def test_latency_summary_is_in_milliseconds() -> None:
    s = summarize_latencies([0.001] * 99 + [0.1])
    assert s["p50_ms"] == pytest.approx(1.0)
    assert s["max_ms"] == pytest.approx(100.0)
    assert 1.0 < s["p99_ms"] <= 100.0


def test_rss_parsing_and_per_stream_delta() -> None:
    status = "Name:\tpython\nVmPeak:\t  999 kB\nVmRSS:\t   51200 kB\nThreads:\t1\n"
    assert parse_vmrss_kib(status) == 51200
    with pytest.raises(ValueError):
        parse_vmrss_kib("Name:\tpython\n")
    assert rss_per_stream(51200, 71200, 2000) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        rss_per_stream(1, 2, 0)


def _round(rps: float, p50: float, cpu_us: float = 100.0) -> dict[str, float]:
    return {"rps": rps, "p50_ms": p50, "p99_ms": p50 * 2, "cpu_us_per_request": cpu_us, "errors": 0}


def test_ratios_pair_measurements_of_the_same_round() -> None:
    # round 2 is globally slower (noise); per-round pairing keeps the ratio at 0.5 in both rounds
    raw = {
        "json_c1": {
            "direct": [_round(1000, 0.4), _round(500, 0.8)],
            "bare": [_round(800, 0.5), _round(400, 1.0)],
            "gw_embedded": [_round(500, 0.9), _round(250, 1.4)],
        },
        "json_c32": {
            "direct": [_round(10000, 2), _round(5000, 4)],
            "bare": [_round(6000, 3), _round(3000, 6)],
            "gw_embedded": [_round(3000, 6, 250), _round(1500, 12, 310)],
        },
    }
    r = per_round_ratios(raw)
    assert r["gw_embedded_vs_bare_rps_json_c32"] == pytest.approx(0.5)
    assert r["gw_embedded_vs_direct_rps_json_c32"] == pytest.approx(0.3)
    assert r["gw_embedded_added_p50_ms_c1"] == pytest.approx(0.55)
    assert r["bare_added_p50_ms_c1"] == pytest.approx(0.15)
    assert r["gw_embedded_vs_bare_cpu_per_request_json_c32"] == pytest.approx(2.8)  # median of 2.5 and 3.1
    assert math.isnan(r["gw_redis_pg_vs_bare_rps_json_c32"])  # target absent: no figure, not zero


def test_failed_rounds_are_left_out_of_medians_and_ratios() -> None:
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {
        "json_c32": {
            "bare": [_round(1000, 1), _round(1000, 1), _round(1000, 1)],
            "gw_embedded": [_round(950, 1), {"error": "timed out"}, _round(850, 1)],
        }
    }
    summary = summarize(raw)
    assert summary["json_c32"]["gw_embedded"]["rps"] == pytest.approx(900)
    assert summary["json_c32"]["gw_embedded"]["ok_rounds"] == 2
    assert per_round_ratios(raw)["gw_embedded_vs_bare_rps_json_c32"] == pytest.approx(0.9)


def test_issue_targets_verdicts() -> None:
    ratios = {
        "gw_embedded_vs_bare_rps_json_c32": 0.95,
        "gw_redis_pg_vs_bare_rps_json_c32": 0.6,
        "gw_embedded_added_p50_ms_c1": 0.8,
    }
    summary = {"sse": {"gw_embedded": {"p50_ms": 1.0, "p99_ms": 7.0, "max_ms": 9.0}}}
    checks = check_issue_targets(ratios, summary, {"gw_embedded": {"projected_10k_mib": 700.0}})
    assert checks["gw_embedded_vs_bare_c32"]["met"] is True
    assert checks["gw_redis_pg_vs_bare_c32"]["met"] is False
    assert checks["added_p50_ms_c1"]["met"] is True
    assert checks["sse_p99_ms"]["met"] is False
    assert checks["rss_10k_streams_mib"]["met"] is True
    assert checks["gw_embedded_cpu_vs_bare_c32"]["met"] is None  # no CPU figures given
    cpu = check_issue_targets({"gw_embedded_vs_bare_cpu_per_request_json_c32": 1.11}, summary, {})
    assert cpu["gw_embedded_cpu_vs_bare_c32"] == {"value": 1.11, "goal": 1.11, "met": True}
    assert check_issue_targets({}, {}, {})["gw_embedded_vs_bare_c32"]["met"] is None


def test_collapsed_profile_self_and_inclusive_shares() -> None:
    text = "\n".join(
        [
            "run (a.py:1);handle (b.py:10);parse (c.py:5) 6",
            "run (a.py:1);handle (b.py:12);write (d.py:7) 3",
            "run (a.py:1);handle (b.py:10) 1",
            "garbage line without count",
        ]
    )
    p = parse_collapsed(text)
    assert p["samples"] == 10
    self_top = top(p["self"], p["samples"], 2)
    assert self_top[0] == {"function": "parse (c.py)", "share": pytest.approx(0.6)}
    incl = {row["function"]: row["share"] for row in top(p["inclusive"], p["samples"], 10)}
    # line numbers are folded, so one function is counted once per stack
    assert incl["handle (b.py)"] == pytest.approx(1.0)
    assert incl["write (d.py)"] == pytest.approx(0.3)


def test_collapsed_profile_with_threads_counts_the_event_loop_thread_apart() -> None:
    text = "\n".join(
        [
            "thread (11): MainThread;run (a.py:1);handle (b.py:10) 7",
            "thread (12): ThreadPoolExecutor-0_0;_worker (thread.py:3);fsync_batch (audit.py:9) 3",
        ]
    )
    p = parse_collapsed(text)
    assert p["samples"] == 10
    assert dict(p["threads"]) == {"MainThread": 7, "ThreadPoolExecutor-0_0": 3}
    assert dict(p["main_self"]) == {"handle (b.py)": 7}
    assert "thread (11): MainThread" not in p["inclusive"]


def test_redis_commandstats_delta_per_command() -> None:
    before = redis_commands({"cmdstat_evalsha": {"calls": 10, "usec": 5}, "cmdstat_get": {"calls": 3}})
    after = redis_commands(
        {"cmdstat_evalsha": {"calls": 30}, "cmdstat_get": {"calls": 3}, "cmdstat_set": {"calls": 4}, "uptime": 9}
    )
    assert commands_delta(before, after) == {"evalsha": 20, "set": 4}


def test_proc_stat_cpu_ticks_survive_spaces_in_the_command_name() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    stat = "4242 (python -m gw) S 1 4242 4242 0 -1 4194560 100 0 0 0 731 269 0 0 20 0 3 0 5000\n"
    assert parse_proc_cpu_ticks(stat) == 1000
