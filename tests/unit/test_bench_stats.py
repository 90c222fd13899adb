"""The benchmark's statistics and profile reduction (pure functions; no processes, no timing)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.perf.measure import parse_loop_lag
from tests.perf.profile import parse_collapsed, top
from tests.perf.report import (
    check_issue22_targets,
    check_issue_targets,
    holds_by_holder,
    per_round_ratios,
    render_tail,
    summarize,
)
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
    assert 1.0 < s["p99_ms"] <= s["p999_ms"] <= 100.0
    many = summarize_latencies([0.001] * 998 + [0.05, 0.2])  # the two slowest of 1000
    assert many["p99_ms"] == pytest.approx(1.0) and 50.0 <= many["p999_ms"] <= 200.0


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


def _tail(p99: float, p999: float, stall: float) -> dict[str, float]:
    return {**_round(1000, p99 / 2), "p999_ms": p999, "loop_lag_max_ms": stall * 3, "loop_stall_max_ms": stall}


def test_issue22_tail_targets_pair_rounds_against_the_bare_proxy() -> None:
    raw = {
        "json_c1": {
            "bare": [_tail(0.9, 1.5, 1.0), _tail(2.9, 4.0, 1.0), _tail(0.8, 1.2, 1.0)],
            # round 2 is noisy for both: paired differences stay small
            "gw_embedded": [_tail(1.5, 2.5, 0.9), _tail(3.5, 9.0, 1.5), _tail(1.7, 3.0, 1.1)],
            "gw_redis_pg": [_tail(7.9, 9.5, 6.0), _tail(8.0, 9.9, 7.0), _tail(8.1, 9.9, 8.0)],
        },
        "json_c32": {
            "bare": [_tail(10.0, 12.0, 2.0), _tail(20.0, 25.0, 2.0), _tail(10.0, 13.0, 2.0)],
            "gw_embedded": [_tail(11.0, 13.0, 1.0), _tail(23.0, 30.0, 1.9), _tail(11.5, 14.0, 1.2)],
        },
    }
    summary = summarize(raw)
    assert summary["json_c1"]["gw_embedded"]["p999_ms"] == pytest.approx(3.0)
    assert summary["json_c1"]["gw_embedded"]["loop_stall_max_ms"] == pytest.approx(1.1)
    assert summary["json_c1"]["gw_embedded"]["loop_stall_worst_ms"] == pytest.approx(1.5)
    ratios = per_round_ratios(raw)
    assert ratios["gw_embedded_minus_bare_p99_ms_c1"] == pytest.approx(0.6)  # median of 0.6, 0.6, 0.9
    assert ratios["gw_embedded_minus_bare_p999_ms_c1"] == pytest.approx(1.8)  # median of 1.0, 5.0, 1.8
    assert ratios["gw_embedded_vs_bare_p99_json_c32"] == pytest.approx(1.15)
    checks = check_issue22_targets(ratios, summary)
    assert checks["gw_embedded_p99_c1_minus_bare_ms"]["met"] is True
    assert checks["gw_embedded_p999_c1_minus_bare_ms"]["met"] is True
    assert checks["gw_embedded_p99_c32_vs_bare"]["met"] is True
    assert checks["gw_embedded_loop_stall_max_ms_c1"]["met"] is True
    assert checks["gw_redis_pg_p99_c1_minus_bare_ms"]["met"] is False
    assert checks["gw_redis_pg_loop_stall_max_ms_c1"]["met"] is False
    assert checks["gw_redis_pg_p99_c32_vs_bare"]["met"] is None  # not measured at 32 connections
    text = render_tail({"bare": "(b) bare", "gw_embedded": "(c) gw", "gw_redis_pg": "(d) gw"}, summary, checks)
    assert "gw_redis_pg_p99_c1_minus_bare_ms" in text and "NOT met" in text


def test_loop_lag_figures_from_prometheus_text() -> None:
    text = "\n".join(
        [
            "# TYPE mcp_gateway_event_loop_lag_seconds histogram",
            'mcp_gateway_event_loop_lag_seconds_bucket{le="+Inf"} 812.0',
            "mcp_gateway_event_loop_lag_seconds_count 812.0",
            "mcp_gateway_event_loop_lag_seconds_sum 0.4",
            "# TYPE mcp_gateway_event_loop_lag_max_seconds gauge",
            "mcp_gateway_event_loop_lag_max_seconds 0.0123",
            "# TYPE mcp_gateway_event_loop_stall_max_seconds gauge",
            "mcp_gateway_event_loop_stall_max_seconds 0.0011",
            "",
        ]
    )
    assert parse_loop_lag(text) == {
        "loop_lag_samples": 812.0,
        "loop_lag_max_ms": pytest.approx(12.3),
        "loop_stall_max_ms": pytest.approx(1.1),
    }
    assert parse_loop_lag("") == {}


def test_loop_holds_per_holder_and_the_longest_from_prometheus_text() -> None:
    text = "\n".join(
        [
            "# TYPE mcp_gateway_event_loop_hold_max_seconds gauge",
            'mcp_gateway_event_loop_hold_max_seconds{holder="audit-writer"} 0.0007',
            'mcp_gateway_event_loop_hold_max_seconds{holder="health"} 0.0004',
            'mcp_gateway_event_loop_hold_max_seconds{holder="gc-gen0"} 0.0',
            "",
        ]
    )
    out = parse_loop_lag(text)
    assert out["loop_hold_max_ms"] == pytest.approx(0.7)
    assert out["loop_hold_holder"] == "audit-writer"
    assert out["loop_holds_ms"] == {"audit-writer": 0.7, "health": 0.4, "gc-gen0": 0.0}


def test_the_longest_hold_its_holder_and_the_per_task_budget_verdict() -> None:
    def run(hold: float, holder: str) -> dict[str, object]:
        return {
            "p50_ms": 0.5,
            "p99_ms": 1.0,
            "loop_stall_max_ms": 3.0,
            "loop_hold_max_ms": hold,
            "loop_hold_holder": holder,
            "loop_holds_ms": {holder: hold, "gc-gen0": 0.1},
        }

    raw = {"json_c32": {"gw_embedded": [run(0.6, "health"), run(1.4, "audit-writer"), run(0.8, "health")]}}
    summary = summarize(raw)  # type: ignore[arg-type]
    fig = summary["json_c32"]["gw_embedded"]
    assert fig["loop_hold_max_ms"] == 0.8  # median of the runs' longest
    assert fig["loop_hold_worst_ms"] == 1.4
    assert fig["loop_hold_worst_holder"] == "audit-writer"  # type: ignore[comparison-overlap]
    assert holds_by_holder(raw) == {"gw_embedded": {"audit-writer": 1.4, "health": 0.8, "gc-gen0": 0.1}}  # type: ignore[arg-type]
    checks = check_issue22_targets({}, summary)
    assert checks["gw_embedded_loop_hold_max_ms_c32"] == {"value": 0.8, "goal": 1.0, "met": True}
    assert checks["gw_embedded_loop_stall_max_ms_c32"]["met"] is False  # the raw stall is still reported
