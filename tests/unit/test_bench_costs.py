"""The benchmark's limiter and audit cost figures and its diagnostic targets' policies (no gateway, no timing)."""

from __future__ import annotations

import math
import sys
from typing import Any

import orjson
import pytest

from gateway.policy.limits import LimitsFile
from gateway.settings import AuditSettings
from tests.perf.diagnostics import run_bounded
from tests.perf.report import _markdown_costs, cost_rows, per_round_ratios, render_costs
from tests.perf.targets import NO_AUDIT, NO_LIMITS, bench_policies

pytestmark = pytest.mark.unit


def _r(rps: float, cpu: float) -> dict[str, Any]:
    return {"rps": rps, "p50_ms": 1.0, "p99_ms": 2.0, "cpu_us_per_request": cpu, "errors": 0}


def test_cost_ratios_are_paired_per_round() -> None:
    # round 2 is globally slower (noise); pairing keeps the limiter's ratio at 0.8 in both rounds
    raw = {
        "json_c32": {
            "gw_embedded": [_r(800, 300), _r(400, 330)],
            "gw_embedded_nolimit": [_r(1000, 250), _r(500, 300)],
            "gw_redis_pg": [_r(500, 500), _r(450, 520)],
            "gw_redis_pg_noaudit": [_r(550, 450), {"error": "timed out"}],
        }
    }
    r = per_round_ratios(raw)
    assert r["gw_embedded_vs_gw_embedded_nolimit_rps_json_c32"] == pytest.approx(0.8)
    assert r["gw_embedded_vs_gw_embedded_nolimit_cpu_per_request_json_c32"] == pytest.approx((1.2 + 1.1) / 2)
    assert r["gw_embedded_minus_gw_embedded_nolimit_cpu_us_per_request_json_c32"] == pytest.approx(40)
    # a failed round is left out of the pair, not counted as zero
    assert r["gw_redis_pg_vs_gw_redis_pg_noaudit_rps_json_c32"] == pytest.approx(500 / 550)
    assert math.isnan(r["gw_embedded_vs_gw_embedded_noaudit_rps_json_c32"])  # target not run

    rows = {(row["what"], row["target"]): row for row in cost_rows(r)}
    limiter = rows[("limiter", "gw_embedded")]
    assert limiter["without"] == "gw_embedded_nolimit"
    # share of (c)'s CPU per request that goes away without the limiter: 1 - 1/ratio
    assert limiter["cpu_share"] == pytest.approx(1 - 1 / 1.15)
    assert math.isnan(rows[("audit", "gw_embedded")]["cpu_share"])


def test_cost_figures_render_from_json_nulls_and_missing_diagnostics() -> None:
    ratios = {"gw_embedded_vs_gw_embedded_nolimit_rps_json_c32": 0.9}
    back = orjson.loads(orjson.dumps({"ratios": {**ratios, "x": math.nan}}))  # NaN comes back as null
    labels = {"gw_embedded": "(c) gateway", "gw_embedded_nolimit": "(c-nolimit) (c) without rate limits"}
    md = "\n".join(
        _markdown_costs(
            {
                "ratios": back["ratios"],
                "redis_commands": {"total_per_request": 2.0, "commands_per_request": {"evalsha": 1.0, "getex": 1.0}},
                "audit_throughput": {"file": {"rows_per_second": 30000.0, "observe_ns": 2500.0}},
            },
            labels,
        )
    )
    assert "| limiter | (c) / (c-nolimit) | 0.90 | - | - | - |" in md
    assert "(d-nolimit)" not in md  # a target that did not run has no row
    assert "2.00 per tools/call (evalsha 1.00, getex 1.00)" in md
    assert "file sink 30000 rows/s (observe() 2.5 us" in md
    assert "PostgreSQL not measured (no figure)" in md
    text = render_costs(labels, ratios, {"error": "no redis-server"}, {}, {"postgres": {"error": "down"}})
    assert "limiter, (c)/(c-nolimit)" in text and "throughput 0.90x" in text
    assert "not measured (no redis-server)" in text and "not measured (down)" in text


def test_tracing_cost_rows_name_the_traced_target_first() -> None:
    labels = {
        "gw_embedded": "(c) gateway",
        "gw_embedded_trace1": "(c-trace1) (c), tracing on, sampler ratio 1.0",
    }
    ratios = {"gw_embedded_trace1_vs_gw_embedded_rps_json_c32": 0.8}
    md = "\n".join(_markdown_costs({"ratios": ratios}, labels))
    assert "| tracing, every request sampled | (c-trace1) / (c) | 0.80 |" in md
    assert "no request sampled" not in md  # (c-trace0) did not run: no row
    text = render_costs(labels, ratios, {}, {}, {})
    assert "tracing, every request sampled, (c-trace1)/(c)" in text and "throughput 0.80x" in text


def test_no_limits_policy_leaves_no_tier_and_no_ip_protection() -> None:
    limits = LimitsFile.model_validate(bench_policies(1, 10, limits=False)["limits.yaml"])
    assert limits.tiers == {}  # the default role tiers are replaced, not kept
    assert limits.ip is None and limits.global_ is None and limits.tenant_default is None
    assert limits.ddos.enabled is False
    assert NO_LIMITS == {"tiers": {}, "ddos": {"enabled": False}}
    full = LimitsFile.model_validate(bench_policies(1, 10)["limits.yaml"])
    assert set(full.tiers) == {"admin", "user", "anonymous"} and full.ip is not None and full.ddos.enabled


def test_no_audit_is_the_log_sink_without_records() -> None:
    audit = AuditSettings.model_validate(NO_AUDIT)
    assert audit.sink == "log" and audit.log_records is False


@pytest.mark.timeout(30)  # a 60 s child outliving its 0.5 s deadline would hang here: the hang guard, not a timing
def test_run_bounded_kills_what_outlives_its_deadline() -> None:
    code, _, _ = run_bounded([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
    assert code is None  # killed, not exited
    code, out, _ = run_bounded([sys.executable, "-c", "print('{\"ok\": 1}')"], timeout=30)
    assert code == 0 and out.strip() == '{"ok": 1}'
