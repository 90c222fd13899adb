"""The official MCP conformance suite (every server scenario, active and pending) through the gateway gives the same
result as directly against the same upstream.

The upstream is tests/upstreams/conformance_server.py, which implements every scenario; the suite speaks Streamable
HTTP (POST, the standalone GET stream, SSE resumption with Last-Event-ID, DELETE), and runs at the same time directly,
on an API-key route and on an anonymous route, for each backend (embedded stores, Redis). A scenario whose checks
(every check's id and status) differ from the direct run's fails the test. The dns-rebinding scenario must be
answered by the gateway itself: its 421 refusal, not the upstream's. Needs `make conformance` (make test runs it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests import conformance_harness as conf
from tests.harness import CI, running, start_upstream

pytestmark = pytest.mark.e2e


def _require_suite() -> None:
    problem = conf.installed()
    if problem is None:
        return
    if CI:
        pytest.fail(problem)
    pytest.skip(problem)  # a local run without `make conformance`; CI fails instead (see above)


def _report(results: dict[str, conf.ScenarioResult], scenarios: list[str]) -> str:
    return "; ".join(
        f"{name}: {results[name].summary()}" if name in results else f"{name}: missing" for name in scenarios
    )


@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["embedded", "redis"])
async def test_conformance_suite_through_gateway_equals_direct(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    _require_suite()
    redis_url = request.getfixturevalue("redis_url") if backend == "redis" else None
    upstream = start_upstream(tmp_path, module="tests.upstreams.conformance_server")
    gw = conf.start_conformance_gateway(tmp_path / "gw", upstream.url, redis_url=redis_url)
    with running(gw, upstream):
        scenarios = await conf.server_scenarios()
        assert len(scenarios) >= 30 and "dns-rebinding-protection" in scenarios, scenarios
        runs: dict[str, Any] = {"direct": conf.run_suite(upstream.url, tmp_path / "direct")}
        for route in conf.ROUTES:
            url, auth = conf.route_target(gw, route)
            runs[route] = conf.run_suite(url, tmp_path / route, authorization=auth)
        results = dict(zip(runs, await asyncio.gather(*runs.values()), strict=True))

        direct = results["direct"]
        # the upstream passes every scenario directly (server-sse-polling only warns: see docs/transports.md)
        failed = {name: direct[name].failures for name in scenarios if name not in direct or direct[name].failures}
        assert not failed, f"directly: {failed}\n{_report(direct, scenarios)}"
        for route in conf.ROUTES:
            diff = conf.differences(direct, results[route], scenarios)
            assert not diff, f"{backend}/{route} differs from direct: {diff}\ngateway log:\n{gw.logs()[-3000:]}"
            # DNS rebinding is refused by the gateway itself (421 bad_host), never left to the upstream
            refused = results[route]["dns-rebinding-protection"].details["localhost-host-rebinding-rejected"]
            assert refused["statusCode"] == 421, refused
            assert refused["body"]["error"]["data"]["reason"] == "bad_host", refused
