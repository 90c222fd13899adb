"""The benchmark's CPU budget: /proc parsing, per-process tick deltas, the bounds and the report (fixed inputs)."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from tests.perf.report import (
    BUDGET_COLUMNS,
    COSTS,
    budget_bounds,
    cost_rows,
    markdown_budget,
    render_budget,
    short_label,
    summarize_budget,
)
from tests.perf.stats import (
    TickDeltas,
    cpu_budget_per_request,
    parse_machine_busy_ticks,
    parse_proc_stat_entry,
    throughput_bounds,
)

pytestmark = pytest.mark.unit

# /proc/<pid>/stat of a PostgreSQL backend: its process title is not in `comm`, which may hold spaces and ')'
_STAT = (
    "4242 (postgres) S 2200 2200 2200 0 -1 4194560 1200 0 0 0 "
    "37 15 0 0 20 0 1 0 987654 230000000 4000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0"
)


def test_parse_proc_stat_entry() -> None:
    comm, key, ticks = parse_proc_stat_entry(_STAT)
    assert comm == "postgres"
    assert key == (4242, 987654)  # pid and start time: a reused pid is another process
    assert ticks == 37 + 15
    odd = _STAT.replace("(postgres)", "(a b) c)")
    assert parse_proc_stat_entry(odd)[0] == "a b) c"
    assert parse_proc_stat_entry(odd)[2] == 52


def test_parse_machine_busy_ticks() -> None:
    text = "cpu  1000 20 300 9000 50 7 8 2 100 0\ncpu0 500 10 150 4500 25 3 4 1 50 0\nintr 12345\n"
    # user + nice + system + irq + softirq + steal; idle and iowait left out, guest already in user
    assert parse_machine_busy_ticks(text) == 1000 + 20 + 300 + 7 + 8 + 2
    assert parse_machine_busy_ticks("cpu  1 2 3 4 5 6 7\n") == 1 + 2 + 3 + 6 + 7
    with pytest.raises(ValueError):
        parse_machine_busy_ticks("cpu0 1 2 3 4 5 6 7 8\n")


def test_tick_deltas_processes_appearing_and_disappearing() -> None:
    d = TickDeltas()
    d.observe({(1, 10): 100, (2, 20): 50})  # present at the start: counted from here
    d.observe({(1, 10): 130, (2, 20): 60, (3, 500): 7})  # 3 started during the measurement: counted from 0
    d.observe({(1, 10): 150, (3, 500): 12})  # 2 exited: keeps its last value (what it used after is lost)
    d.observe({(1, 10): 150, (4, 20): 5})  # 3 exited; pid 4 new
    assert d.total() == (150 - 100) + (60 - 50) + 12 + 5
    assert d.processes() == 4
    assert d.samples == 4


def test_tick_deltas_reused_pid_is_a_new_process() -> None:
    d = TickDeltas()
    d.observe({(7, 1): 40})
    d.observe({(7, 1): 45})
    d.observe({(7, 900): 3})  # pid 7 again, another start time: another process, counted from 0
    assert d.total() == 5 + 3
    empty = TickDeltas()
    empty.observe({})
    empty.observe({})
    assert empty.total() == 0


def test_cpu_budget_per_request() -> None:
    parts = {"target": 0.3, "loadgen": 0.144, "upstream": 0.088, "redis": 0.039, "postgres": 0.045}
    b = cpu_budget_per_request(parts, machine_total_s=0.7, served=1000)
    assert b["target"] == pytest.approx(300)
    assert b["redis"] == pytest.approx(39)
    assert b["machine_total"] == pytest.approx(700)
    assert b["other"] == pytest.approx(700 - 300 - 144 - 88 - 39 - 45)
    # the upstream of the upstream itself is not measured: not counted, not zero
    direct = cpu_budget_per_request({"target": 0.1, "upstream": None}, machine_total_s=0.2, served=1000)
    assert direct["upstream"] is None
    assert direct["other"] == pytest.approx(100)
    assert cpu_budget_per_request({"target": 0.1}, None, 10)["other"] is None
    with pytest.raises(ValueError):
        cpu_budget_per_request(parts, 1.0, 0)


def test_throughput_bounds() -> None:
    machine, single = throughput_bounds(total_us=700.0, target_us=300.0, cpus=2)
    assert machine == pytest.approx(2e6 / 700)
    assert single == pytest.approx(1e6 / 300)
    assert all(math.isnan(v) for v in throughput_bounds(None, 0.0, 2))
    assert all(math.isnan(v) for v in throughput_bounds(math.nan, math.nan, 2))


def _round(served_rps: float, budget: dict[str, float | None]) -> dict[str, Any]:
    return {"rps": served_rps, "cpu_us_per_request": budget["target"], "cpu_budget_us_per_request": budget}


def _b(target: float, total: float, upstream: float | None = 88.0) -> dict[str, float | None]:
    parts = {"target": target, "loadgen": 144.0, "upstream": upstream, "redis": 1.0, "postgres": 2.0}
    known = sum(v for v in parts.values() if v is not None)
    return {**parts, "machine_total": total, "other": total - known}


RAW: dict[str, dict[str, list[dict[str, Any]]]] = {
    "json_c32": {
        "direct": [_round(9000, _b(88, 260, None)), _round(8000, _b(90, 270, None))],
        "gw_redis_pg": [_round(2500, _b(300, 700)), _round(2400, _b(320, 740)), {"error": "timed out"}],
    },
    "json_c1": {"gw_redis_pg": [_round(900, _b(400, 900))]},
    "sse": {"gw_redis_pg": [{"p50_ms": 1.0}]},
}
LABELS = {"direct": "(a) direct to upstream", "gw_redis_pg": "(d) gateway, Redis + PostgreSQL"}


def test_summarize_budget_and_bounds() -> None:
    budget = summarize_budget(RAW)
    assert set(budget) == {"json_c32", "json_c1"}
    d = budget["json_c32"]["gw_redis_pg"]
    assert set(d) == set(BUDGET_COLUMNS)
    assert d["target"] == pytest.approx(310)  # median of two rounds; the failed one left out
    assert d["machine_total"] == pytest.approx(720)
    assert math.isnan(budget["json_c32"]["direct"]["upstream"])
    summary = {"json_c32": {"gw_redis_pg": {"rps": 2450.0}}}
    bounds = budget_bounds(budget, summary, cpus=2)
    assert set(bounds) == {"gw_redis_pg"}  # gateways only
    assert bounds["gw_redis_pg"]["machine_bound_rps"] == pytest.approx(2e6 / 720)
    assert bounds["gw_redis_pg"]["single_thread_bound_rps"] == pytest.approx(1e6 / 310)
    assert bounds["gw_redis_pg"]["measured_rps"] == 2450.0


def test_render_budget() -> None:
    budget = summarize_budget(RAW)
    bounds = budget_bounds(budget, {"json_c32": {"gw_redis_pg": {"rps": 2450.0}}}, cpus=2)
    text = render_budget(LABELS, budget, bounds, cpus=2)
    lines = text.splitlines()
    assert "== CPU per request by process (us, median), 32 connections" in lines
    assert "== CPU per request by process (us, median), 1 connection" in lines
    header = lines[lines.index("== CPU per request by process (us, median), 32 connections") + 1]
    assert header.split() == ["target", "target", "loadgen", "upstream", "redis", "postgres", "other", "total"]
    row = next(ln for ln in lines if ln.startswith("(d) gw_redis_pg"))
    assert row.split()[2:] == ["310", "144", "88", "1", "2", "175", "720"]
    direct = next(ln for ln in lines if ln.startswith("(a) direct"))
    assert direct.split()[4] == "-"  # no upstream of its own
    bound = next(ln for ln in lines if "machine bound" in ln)
    assert bound == (
        "(d) gw_redis_pg: machine bound: 2 cores / total CPU per request = 2778 req/s; "
        "single-thread bound: 1 / target CPU = 3226 req/s; measured 2450 req/s"
    )
    assert render_budget(LABELS, {}, {}, cpus=2) == ""
    busy = {"gw_redis_pg": {**bounds["gw_redis_pg"], "measured_rps": 3000.0}}
    assert render_budget(LABELS, budget, busy, cpus=2).endswith(
        "measured 3000 req/s (above the machine bound: other work shared the machine, see `other`)"
    )


def test_markdown_budget_reads_back_from_json() -> None:
    budget = summarize_budget(RAW)
    bounds = budget_bounds(budget, {"json_c32": {"gw_redis_pg": {"rps": 2450.0}}}, cpus=2)
    result = orjson.loads(
        orjson.dumps({"machine": {"nproc": 2}, "cpu_budget_us_per_request": budget, "cpu_budget_bounds": bounds})
    )  # NaN comes back as null
    md = "\n".join(markdown_budget(result, LABELS))
    assert "| (a) direct to upstream | 89 | 144 | - | 1 | 2 |" in md
    assert "| (d) gateway, Redis + PostgreSQL | 310 | 144 | 88 | 1 | 2 | 175 | 720 |" in md
    assert "machine bound (2 cores / total CPU per request) 2778 req/s" in md
    assert markdown_budget({"machine": {}}, LABELS) == []


def test_lean_http_server_cost_row_and_short_labels() -> None:
    assert ("lean HTTP server", "gw_embedded", "gw_embedded_nofast") in COSTS
    ratios = {
        "gw_embedded_vs_gw_embedded_nofast_rps_json_c32": 1.2,
        "gw_embedded_vs_gw_embedded_nofast_cpu_per_request_json_c32": 0.8,
    }
    row = next(r for r in cost_rows(ratios) if r["what"] == "lean HTTP server")
    assert row["rps_ratio"] == 1.2 and row["without"] == "gw_embedded_nofast"
    assert short_label("(c, aiohttp server) as (c), http.fast_path: false") == "(c, aiohttp server)"
    assert short_label("(c-nolimit) (c) without rate limits") == "(c-nolimit)"
    assert short_label("plain") == "plain"
