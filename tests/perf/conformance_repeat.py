"""The official conformance suite, N times, directly against the conformance upstream and through the gateway.

    .venv/bin/python -m tests.perf.conformance_repeat [--runs 10] [--backends embedded,redis] [--routes key,anonymous]
        [--no-wait]

Starts tests/upstreams/conformance_server.py and one gateway per backend (embedded stores; Redis at --redis-url
under a key prefix of its own), each serving the upstream on an API-key route and an anonymous route. Every run
sends the whole suite (`--suite all`) at the upstream and at every gateway route at the same time, then compares each
route's scenario results (every check's id and status) with the direct run's. Prints, per route, how many runs were
equal to direct, and per scenario how often it failed (a FAILURE check) directly and on each route. Figures go in
docs/transports.md (Conformance). Needs `make conformance` (the suite and its Node.js) and, for Redis, `make services`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests import conformance_harness as conf
from tests.harness import Gateway, start_upstream


def log(msg: str) -> None:
    print(f"[conformance {time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def repeat(args: argparse.Namespace, workdir: Path) -> int:
    extra = ["--no-wait"] if args.no_wait else []
    upstream = start_upstream(workdir, module="tests.upstreams.conformance_server", extra_args=extra)
    gateways: dict[str, Gateway] = {}
    try:
        for backend in args.backends:
            redis_url = args.redis_url if backend == "redis" else None
            gateways[backend] = conf.start_conformance_gateway(
                workdir / f"gw-{backend}", upstream.url, redis_url=redis_url
            )
        scenarios = await conf.server_scenarios()
        targets = {f"{b}/{r}": conf.route_target(gw, r) for b, gw in gateways.items() for r in args.routes}
        equal: Counter[str] = Counter()
        failed: dict[str, Counter[str]] = {name: Counter() for name in ("direct", *targets)}
        started = time.monotonic()
        for run in range(1, args.runs + 1):
            t0 = time.monotonic()
            jobs = {"direct": conf.run_suite(upstream.url, workdir / f"run{run}-direct")}
            for name, (url, auth) in targets.items():
                out = workdir / f"run{run}-{name.replace('/', '-')}"
                jobs[name] = conf.run_suite(url, out, authorization=auth)
            results = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
            for name, res in results.items():
                for scenario in scenarios:
                    got = res.get(scenario)
                    if got is None or got.failures:
                        failed[name][scenario] += 1
            notes = []
            for name in targets:
                diff = conf.differences(results["direct"], results[name], scenarios)
                if diff:
                    notes.append(f"{name} differs on {', '.join(sorted(diff))}")
                else:
                    equal[name] += 1
            direct_failed = [s for s in scenarios if not _passed(results["direct"], s)]
            if direct_failed:
                notes.append(f"direct failed {', '.join(direct_failed)}")
            log(f"run {run}/{args.runs} ({time.monotonic() - t0:.0f}s): {'; '.join(notes) or 'all equal to direct'}")
        log(f"{args.runs} runs of {len(scenarios)} scenarios in {time.monotonic() - started:.0f}s")
        for name in targets:
            print(f"{name}: equal to direct in {equal[name]} of {args.runs} runs")
        for name, counts in failed.items():
            listed = ", ".join(f"{s} {n}/{args.runs}" for s, n in sorted(counts.items())) or "none"
            print(f"failures {name}: {listed}")
        return 0 if all(equal[name] == args.runs for name in targets) else 1
    finally:
        for gw in gateways.values():
            gw.stop()
        upstream.stop()


def _passed(results: dict[str, conf.ScenarioResult], scenario: str) -> bool:
    got = results.get(scenario)
    return got is not None and not got.failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--backends", type=lambda s: s.split(","), default=["embedded", "redis"])
    parser.add_argument("--routes", type=lambda s: s.split(","), default=["key", "anonymous"])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="the upstream sends sampling/elicitation at once, before the session's GET stream is open",
    )
    args = parser.parse_args()
    problem = conf.installed()
    if problem:
        sys.exit(problem)
    # SIGTERM (and SIGINT, which a background job ignores) stops the runs and still stops what they started
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="mgw-conformance-") as tmp:
        sys.exit(asyncio.run(repeat(args, Path(tmp))))


if __name__ == "__main__":
    main()
