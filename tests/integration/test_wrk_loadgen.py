"""The bench's wrk load generator (tests/perf/loadgen.py `json-wrk`, tests/perf/wrk_json.lua) against a real gateway:
every request is inside the initialized session, carries the key and a JSON-RPC id of its own (the gateway refuses
a request whose id is still in flight in the session, so ids repeated across wrk's connections would show up as
errors, even where a refusal is sent as 200 with the JSON-RPC error), and the figures come back in the shape the
bench reads. `make test` installs wrk (`make wrk`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import PYTHON, default_policies, running, start_gateway, start_upstream
from tests.perf.targets import NO_LIMITS

pytestmark = pytest.mark.integration


def test_wrk_drives_tools_calls_with_unique_ids_through_the_gateway(tmp_path: Path) -> None:
    assert shutil.which("wrk"), "wrk is not installed: make wrk"
    up = start_upstream(tmp_path, module="tests.perf.upstream")
    keys = {"bench": {"tenant": "acme", "scopes": ["read", "write"]}}
    policies = {**default_policies(up.url), "limits.yaml": NO_LIMITS}  # no refusal: every answer must be good
    gw = start_gateway(tmp_path / "gw", policies, keys=keys)
    with running(gw, up):
        (name, value), *_ = gw.auth("bench").items()
        argv = [PYTHON, "-m", "tests.perf.loadgen", "json-wrk", gw.url(), "--conns", "8", "--duration", "1"]
        done = subprocess.run(
            [*argv, "--warmup", "1", "--header", f"{name}: {value}"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads(done.stdout.strip().splitlines()[-1])
    assert res["loadgen"] == "wrk"
    assert res["errors"] == 0, res["error_sample"]
    assert res["requests"] > 0 and res["rps"] > 0
    # warm-up and measured requests, and the session's initialize + initialized: what the target served
    assert res["served"] > res["requests"] + 2
    assert 0 < res["p50_ms"] <= res["p99_ms"] <= res["p999_ms"] <= res["max_ms"]
    assert res["cpu_s"] > 0  # wrk's own CPU, counted for the bench's budget
