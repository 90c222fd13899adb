"""How conformance runs are read and compared (tests/conformance_harness.py): the comparison the e2e test and the
repeat script rely on must see a changed status, a lost or extra check and a scenario that did not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conformance_harness import ScenarioResult, differences, read_results

pytestmark = pytest.mark.unit


def _write(out: Path, scenario: str, checks: list[dict[str, object]]) -> None:
    run = out / f"server-{scenario}-2026-12-07T14-16-17-198Z"
    run.mkdir(parents=True)
    (run / "checks.json").write_text(json.dumps(checks))


def test_read_results_keeps_every_check_id_and_status(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "dns-rebinding-protection",
        [
            {"id": "b", "status": "SUCCESS", "details": {"statusCode": 421}},
            {"id": "a", "status": "FAILURE"},
        ],
    )
    _write(tmp_path, "server-sse-polling", [{"id": "e", "status": "INFO"}, {"id": "e", "status": "INFO"}])
    (tmp_path / "suite.log").write_text("not a result")
    got = read_results(tmp_path)
    assert set(got) == {"dns-rebinding-protection", "server-sse-polling"}
    assert got["dns-rebinding-protection"].checks == (("a", "FAILURE"), ("b", "SUCCESS"))
    assert got["dns-rebinding-protection"].failures == ["a"]
    assert got["dns-rebinding-protection"].details["b"] == {"statusCode": 421}
    assert got["server-sse-polling"].checks == (("e", "INFO"), ("e", "INFO"))


def test_differences_sees_status_count_and_missing_scenarios() -> None:
    ok = ScenarioResult("s", (("c", "SUCCESS"),))
    direct = {"s": ok, "t": ok, "u": ok, "v": ok}
    gateway = {
        "s": ScenarioResult("s", (("c", "SUCCESS"),), {"ignored": 1}),  # same checks: details do not count
        "t": ScenarioResult("t", (("c", "FAILURE"),)),
        "u": ScenarioResult("u", (("c", "SUCCESS"), ("c", "SUCCESS"))),
    }
    diff = differences(direct, gateway, ["s", "t", "u", "v"])
    assert set(diff) == {"t", "u", "v"}
    assert "gateway: missing" in diff["v"]
