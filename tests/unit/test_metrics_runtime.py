"""Process, platform and GC collectors on the gateway's registry (also with worker files), `_created` series only
when asked for, and the per-tool counters' `tool` label (a name the policy spells out, else `_other`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.context import RequestContext
from gateway.jsonrpc import parse_message
from gateway.metrics import GatewayMetrics
from gateway.policy.model import PolicySet
from gateway.policy.snapshot import Snapshot
from gateway.toolnames import OTHER_TOOL, ToolLabels, named_tools
from tests.harness import metric_sample

pytestmark = pytest.mark.unit

RUNTIME_FAMILIES = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
    "python_gc_collections_total",
    "python_gc_objects_collected_total",
    "python_info",
)


def names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_runtime_collectors_are_on_the_registry() -> None:
    text = GatewayMetrics(CollectorRegistry(), worker=0, runtime_collectors=True).render().decode()
    assert set(RUNTIME_FAMILIES) <= names(text)
    assert metric_sample(text, "process_resident_memory_bytes") > 0
    assert metric_sample(text, "python_info", major=str(sys.version_info.major)) == 1


def test_runtime_collectors_only_when_asked() -> None:
    text = GatewayMetrics(CollectorRegistry(), worker=0).render().decode()
    assert not names(text) & set(RUNTIME_FAMILIES)


async def test_no_created_series_unless_asked() -> None:
    plain = GatewayMetrics(CollectorRegistry(), worker=0, runtime_collectors=True)
    asked = GatewayMetrics(CollectorRegistry(), worker=0, created_series=True)
    for m in (plain, asked):
        m.policy_loaded(True, "v1")
    for text in (plain.render().decode(), (await plain.render_paced()).decode()):
        assert not [n for n in names(text) if n.endswith("_created")]
        assert metric_sample(text, "mcp_gateway_policy_reloads_total", result="ok") == 1
    shown = asked.render().decode()
    assert "mcp_gateway_policy_reloads_created" in names(shown)
    assert "mcp_gateway_request_duration_seconds_created" not in names(shown)  # no child observed yet
    assert metric_sample(shown, "mcp_gateway_policy_reloads_total", result="ok") == 1


# --------------------------------------------------------------------------- multiprocess (workers)

WORKER = r"""
import asyncio, json, sys
from prometheus_client.core import CounterMetricFamily
from gateway.metrics import GatewayMetrics

class Fake:
    value = float(sys.argv[1])
    def collect(self):
        c = CounterMetricFamily("test_scrape_time", "a scrape-time counter")
        c.add_metric([], Fake.value)
        yield c

async def main():
    m = GatewayMetrics(runtime_collectors=True)
    m.registry.register(Fake())
    await m.refresh()
    Fake.value = float(sys.argv[2])  # a collector reset: adds nothing
    await m.refresh()
    Fake.value = float(sys.argv[3])
    await m.refresh()
    text = (await asyncio.to_thread(m.render)).decode()
    import os
    print(json.dumps({"pid": os.getpid(), "text": text}))

asyncio.run(main())
"""


def _worker(tmp: Path, *values: float) -> dict[str, Any]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp)}
    out = subprocess.run(
        [sys.executable, "-c", WORKER, *map(str, values)], env=env, capture_output=True, check=True, timeout=60
    )
    data: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return data


def test_runtime_metrics_with_worker_files(tmp_path: Path) -> None:
    first = _worker(tmp_path, 5, 2, 3)  # gains 5, then nothing (reset to 2), then 1: 6
    second = _worker(tmp_path, 4, 4, 4)  # gains 4
    text = second["text"]
    # scrape-time counters are totals over every worker that ever ran, like the gateway's own counters
    assert metric_sample(text, "test_scrape_time_total") == 10
    assert metric_sample(text, "process_cpu_seconds_total") > 0
    assert metric_sample(text, "python_gc_collections_total", generation="0") > 0
    assert "python_gc_collections_total" in names(text)
    # gauges show each worker by pid (the first worker's files are still there: it was not marked dead)
    for pid in (first["pid"], second["pid"]):
        assert metric_sample(text, "process_resident_memory_bytes", pid=str(pid)) > 0
        assert metric_sample(text, "python_info", pid=str(pid)) == 1
    assert not [n for n in names(text) if n.endswith("_created")]


# --------------------------------------------------------------------------- per-tool counters


def snapshot(policies: dict[str, Any]) -> Snapshot:
    return Snapshot.build(PolicySet.model_validate(policies), "v", Path("."), 0.0)


POLICY: dict[str, Any] = {
    "servers": {"servers": {"crm": {"upstreams": [{"url": "http://127.0.0.1:1/mcp"}], "tool_costs": {"export": 5}}}},
    "tenants": {"tenants": {"acme": {"servers": ["crm"], "tools": {"deny": ["drop_table", "admin_*"]}}}},
    "keys": {"keys": [{"id": "k1", "hash": "0" * 64, "tenant": "acme", "tools": {"allow": ["search", "get?"]}}]},
    "access": {"rules": [{"role": "user", "tools": {"deny": ["wipe"]}}]},
}


def test_named_tools_are_the_plain_names_the_policy_spells_out() -> None:
    assert named_tools(snapshot(POLICY)) == {"export", "drop_table", "search", "wipe"}


def test_tool_label_is_the_name_or_other() -> None:
    labels = ToolLabels()
    snap = snapshot(POLICY)
    assert labels.label(snap, "search") == "search"
    assert labels.label(snap, "admin_users") == OTHER_TOOL  # matched by a pattern, named by none
    assert labels.label(snap, "x" * 10_000) == OTHER_TOOL
    assert labels.label(None, "search") == OTHER_TOOL


def _call(snap: Snapshot, tool: str, refused: bool) -> RequestContext:
    ctx = RequestContext(
        request_id="r",
        snapshot=snap,
        server_name="crm",
        server=snap.servers["crm"],
        client_ip="127.0.0.1",
        transport="streamable_http",
        http_method="POST",
    )
    ctx.message = parse_message(
        orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}})
    )
    ctx.http_status = 403 if refused else 200
    if refused:
        ctx.refused_stage, ctx.refused_reason = "authz", "tool_denied"
    return ctx


@pytest.mark.parametrize("deferred", [True, False])
def test_tool_counters(deferred: bool) -> None:
    m = GatewayMetrics(CollectorRegistry(), worker=0)
    m._deferred = deferred
    snap = snapshot(POLICY)
    for i in range(500):
        m.observe(_call(snap, f"made_up_{i}", refused=i % 2 == 0))
    m.observe(_call(snap, "search", refused=False))
    m.observe(_call(snap, "wipe", refused=True))
    text = m.render().decode()
    assert metric_sample(text, "mcp_gateway_tool_requests_total", server="crm", tool=OTHER_TOOL) == 500
    assert metric_sample(text, "mcp_gateway_tool_requests_total", server="crm", tool="search") == 1
    assert metric_sample(text, "mcp_gateway_tool_requests_total", server="crm", tool="wipe") == 1
    assert metric_sample(text, "mcp_gateway_tool_refusals_total", tool=OTHER_TOOL, reason="tool_denied") == 250
    assert metric_sample(text, "mcp_gateway_tool_refusals_total", tool="wipe", stage="authz") == 1
    assert metric_sample(text, "mcp_gateway_tool_refusals_total", tool="search") == 0
    assert "made_up" not in text
    assert len(m._tool_children) == 3
