"""Load benchmark: direct upstream vs bare aiohttp proxy vs the gateway, measured interleaved in one run.

    python -m tests.perf.bench [--rounds N] [--duration S] [--quick] [--streams N] [--no-profile]
    python -m tests.perf.bench --latency [--rounds N] [--duration S]    # issue 22's tail-latency targets only

Every scenario is measured in rounds; within a round the targets are visited in a fixed order that puts the bare
proxy between the two gateways it is compared with (and each cost variant next to its gateway), forwards in even
rounds and backwards in odd ones, so no target always runs first or last and every compared pair is measured back
to back. Figures are medians across rounds. Ratios are medians of per-round ratios: two measurements taken seconds
apart see the same machine noise. The load generator runs in its
own process. Every process the bench starts is stopped at the end, and every wait is bounded.
See docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from tests.harness import ROOT, Gateway
from tests.perf.diagnostics import (
    measure_audit_throughput,
    measure_gc,
    measure_redis_round_trips,
    run_profile,
    start_probed_gateway,
)
from tests.perf.measure import (
    log,
    measure_idle_streams,
    measure_json,
    measure_sse,
    raise_fd_limit,
    use_loadgen,
)
from tests.perf.report import (
    Raw,
    budget_bounds,
    check_issue22_targets,
    check_issue_targets,
    cost_rows,
    holds_by_holder,
    per_round_ratios,
    render_budget,
    render_costs,
    render_diagnostics,
    render_holds,
    render_latency_markdown,
    render_markdown,
    render_table,
    render_tail,
    summarize,
    summarize_budget,
)
from tests.perf.targets import (
    NO_AUDIT,
    NO_LIMITS,
    Backends,
    Target,
    backend_activity,
    cleanup_backends,
    gateway_target,
    prepare_backends,
    process_group,
    stage_status,
    start_bare_proxy,
    start_bench_gateway,
    start_fast_upstream,
    start_otlp_sink,
    wait_ready,
)

RESULTS = ROOT / "tests" / "perf" / "results" / "latest.json"
LATENCY_RESULTS = ROOT / "tests" / "perf" / "results" / "latency.json"
# --latency: the tail-latency targets of issue 22 only (the bare proxy between the two gateways it is compared with)
LATENCY_TARGETS = ("gw_embedded", "bare", "gw_redis_pg")
JSON_SCENARIOS = {"json_c1": 1, "json_c32": 32}
# the two-worker target only makes sense under concurrency; gw_gc_tuned runs only with --gc-tuned-target. The cost
# targets (a gateway without rate limits, one with the least audit) run only at 32 connections, to keep the run
# short, and are listed next to the target they are compared with, so a pair is measured seconds apart
COST_TARGETS = {
    # name: label; tests/perf/report.py COSTS says which target each is compared with
    "gw_embedded_nolimit": "(c-nolimit) (c) without rate limits",
    "gw_embedded_noaudit": "(c-noaudit) (c), audit sink log, no records",
    # what the audit journal (issue 15 item 4: a pre-record of every answer written before its first byte) costs
    "gw_embedded_nojournal": "(c-nojournal) (c), audit.journal: false",
    # compared with (c) as what the lean HTTP server (http.fast_path, default on) saves; a gateway without the
    # setting refuses to start with it, and the target is then listed as unavailable
    "gw_embedded_nofast": "(c, aiohttp server) as (c), http.fast_path: false",
    # OpenTelemetry tracing on (exporting to an OTLP sink on the same machine), every request sampled, and with a
    # sampler that keeps none: what spans cost, and what tracing costs a request that is not sampled. (c) itself
    # runs with tracing off, whose cost is none by construction (compare (c) across runs)
    "gw_embedded_trace1": "(c-trace1) (c), tracing on, sampler ratio 1.0",
    "gw_embedded_trace0": "(c-trace0) (c), tracing on, sampler ratio 0.0",
    "gw_redis_pg_nolimit": "(d-nolimit) (d) without rate limits",
    "gw_redis_pg_noaudit": "(d-noaudit) (d), audit sink log, no records",
}
SCENARIO_TARGETS = {
    "json_c1": ("gw_embedded", "direct", "bare", "gw_redis_pg", "gw_gc_tuned"),
    # back to back: (c) bare (d), each cost variant beside its gateway, (e) beside (d). The machine's speed drifts
    # by more than 10% within seconds; with the bare proxy five measurements away from (d) (round-robin order),
    # the same code's (d) ratio ranged 0.59-0.76 between runs
    "json_c32": (
        "gw_embedded_nofast",
        "gw_embedded_noaudit",
        "gw_embedded_nolimit",
        "gw_embedded_nojournal",
        "gw_embedded_trace1",
        "gw_embedded",
        "gw_embedded_trace0",
        "bare",
        "gw_redis_pg",
        "gw_redis_pg_nolimit",
        "gw_redis_pg_noaudit",
        "gw_workers2",
        "direct",
        "gw_gc_tuned",
    ),
    "sse": ("direct", "bare", "gw_embedded", "gw_redis_pg"),
}


def machine_info(rounds: int, args: argparse.Namespace) -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout.strip()
    import aiohttp

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
        "loadgen": getattr(args, "loadgen", "python"),
        "git_commit": commit,
        # the machine is shared: a high load average means other work competed with every target
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "rounds": rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "quick": args.quick,
        "cost_targets": not args.no_cost_targets,
        "audit_records": args.audit_records,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.perf.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=None, help="rounds per scenario (default 5; quick 2)")
    p.add_argument("--duration", type=float, default=None, help="seconds per measurement (default 4; quick 1)")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each measurement")
    p.add_argument("--quick", action="store_true", help="short sanity run")
    p.add_argument(
        "--latency",
        action="store_true",
        help="only the tail-latency targets: 1 and 32 connections, bare proxy and gateways (c) and (d); ~3 minutes",
    )
    p.add_argument("--streams", type=int, default=None, help="idle SSE streams for the memory scenario (2000)")
    p.add_argument("--sse-events", type=int, default=None, help="events per SSE latency measurement (200)")
    p.add_argument("--profile-seconds", type=float, default=None, help="py-spy profile length (10; quick 3)")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument(
        "--gc-tuned-target",
        action="store_true",
        help="also measure (c) with the suggested GC tuning (gc_probe --tuned) as a diagnostic target",
    )
    p.add_argument(
        "--no-cost-targets",
        action="store_true",
        help="skip the diagnostic targets without rate limits / with the least audit / without the lean HTTP server",
    )
    p.add_argument("--audit-records", type=int, default=None, help="records per audit throughput run (50000)")
    p.add_argument("--output", type=Path, default=None, help="default results/latest.json (--latency: latency.json)")
    p.add_argument(
        "--loadgen",
        choices=["wrk", "python"],
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator of the JSON scenarios: wrk (default when installed; make bench installs it) or the "
        "Python one (tests/perf/loadgen.py), which spends ~10x more CPU per request on the same cores",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and audit files (kept anyway on failure)")
    args = p.parse_args(argv)
    q = args.quick
    # five rounds: this shared machine's speed drifts within a run (per-round ratios spread by about +-10%), and a
    # median of three moved by up to 0.05 between runs of the same code
    args.rounds = args.rounds or (2 if q else 3 if args.latency else 5)
    args.duration = args.duration or (1.0 if q else 5.0 if args.latency else 4.0)
    args.output = args.output or (LATENCY_RESULTS if args.latency else RESULTS)
    args.streams = args.streams or (200 if q else 2000)
    args.sse_events = args.sse_events or (50 if q else 200)
    args.profile_seconds = args.profile_seconds or (3.0 if q else 10.0)
    args.audit_records = args.audit_records or (20_000 if q else 50_000)
    if args.rounds < 1 or args.duration <= 0 or args.streams < 1:
        p.error("--rounds, --duration and --streams must be positive")
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds through main's `finally`, which stops every process the bench started
    raise SystemExit(128 + signum)


@dataclass
class Run:
    """What one bench run started, so `main` can stop all of it whatever happens."""

    workdir: Path
    streams: int
    tick_interval: float = 0.005
    procs: list[Any] = field(default_factory=list)
    backends: Backends | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    up_port: int = 0

    def stop(self, keep_workdir: bool) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                p.stop()
        if self.backends is not None:
            cleanup_backends(self.backends)
        if keep_workdir:
            log(f"logs and audit files kept in {self.workdir}")
        else:
            # audit files of a run reach hundreds of MB
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_targets(run: Run, args: argparse.Namespace) -> dict[str, Target]:
    """Upstream, bare proxy and the gateways; a gateway that cannot start is reported, (c) is required."""
    upstream, up_port = start_fast_upstream(run.workdir, run.tick_interval, args.sse_events)
    run.procs.append(upstream)
    run.up_port = up_port
    bare, bare_port = start_bare_proxy(run.workdir, up_port)
    run.procs.append(bare)
    pool = run.streams + 256
    up, via = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{bare_port}"
    targets = {
        "direct": Target("direct", "(a) direct to upstream", f"{up}/mcp", f"{up}/tick", pid=upstream.pid),
        "bare": Target(
            "bare",
            "(b) bare aiohttp proxy",
            f"{via}/mcp",
            f"{via}/tick",
            pid=bare.pid,
            lag_url=f"{via}/_looplag/metrics",
        ),
    }
    gw = start_bench_gateway(run.workdir, "embedded", up_port, pool)
    run.procs.append(gw)
    targets["gw_embedded"] = gateway_target("gw_embedded", "(c) gateway, embedded backends", gw)

    backends = run.backends = prepare_backends()
    cfg: dict[str, Any] = {"redis": {"url": backends.redis_url, "key_prefix": backends.key_prefix}}
    if backends.pg_dsn is not None:
        cfg["postgres"] = {"dsn": backends.pg_dsn}
        cfg["audit"] = {"sink": "postgres"}
    started: dict[str, Gateway] = {"gw_embedded": gw}
    try:
        gw2 = start_bench_gateway(run.workdir, "redis_pg", up_port, pool, cfg)
        run.procs.append(gw2)
        started["gw_redis_pg"] = gw2
        targets["gw_redis_pg"] = gateway_target("gw_redis_pg", "(d) gateway, Redis + PostgreSQL", gw2)
        targets["gw_redis_pg"].notes["backends"] = backends.notes
    except (RuntimeError, TimeoutError) as exc:
        run.unavailable["(d) gateway, Redis + PostgreSQL"] = f"did not start: {str(exc)[-400:]}"
    if args.latency:
        return _ready(run, targets, started)
    try:
        # without Redis each worker keeps its own session bindings, so a session initialized on one worker is
        # unknown to the other (docs/operations.md): two workers share state through Redis, like (d)
        cfg3 = {**cfg, "workers": 2, "redis": {**cfg["redis"], "key_prefix": backends.key_prefix + "w2:"}}
        gw3 = start_bench_gateway(run.workdir, "workers2", up_port, pool, cfg3)
        run.procs.append(gw3)
        started["gw_workers2"] = gw3
    except (RuntimeError, TimeoutError) as exc:
        run.unavailable["(e) gateway, workers: 2"] = f"did not start: {str(exc)[-400:]}"
    if not args.no_cost_targets:
        # interleaved with the others at 32 connections: what the rate limiter and the audit trail cost the gateway.
        # Own key prefixes; the (d) variants share (d)'s database (its audit rows include (d-nolimit)'s)
        variants: list[tuple[str, str, dict[str, Any], bool]] = [
            ("gw_embedded_nolimit", "embedded_nolimit", {}, False),
            ("gw_embedded_noaudit", "embedded_noaudit", {"audit": NO_AUDIT}, True),
            ("gw_embedded_nofast", "embedded_nofast", {"http": {"fast_path": False}}, True),
            ("gw_embedded_nojournal", "embedded_nojournal", {"audit": {"journal": False}}, True),
        ]
        sink, sink_port = start_otlp_sink(run.workdir)
        run.procs.append(sink)
        tracing = {"enabled": True, "endpoint": f"http://127.0.0.1:{sink_port}/v1/traces"}
        for ratio in (1, 0):
            vcfg_t = {"tracing": {**tracing, "sampler": {"ratio": float(ratio)}}}
            variants.append((f"gw_embedded_trace{ratio}", f"embedded_trace{ratio}", vcfg_t, True))
        if "gw_redis_pg" in started:
            for suffix, extra, limits in (("nolimit", {}, False), ("noaudit", {"audit": NO_AUDIT}, True)):
                redis_cfg = {**cfg["redis"], "key_prefix": f"{backends.key_prefix}{suffix}:"}
                variants.append(
                    (f"gw_redis_pg_{suffix}", f"redis_pg_{suffix}", {**cfg, "redis": redis_cfg, **extra}, limits)
                )
        for name, subdir, vcfg, limits in variants:
            label = COST_TARGETS[name]
            try:
                g = start_bench_gateway(run.workdir, subdir, up_port, pool, vcfg, limits=limits)
            except (RuntimeError, TimeoutError) as exc:
                run.unavailable[label] = f"did not start: {str(exc)[-400:]}"
                continue
            run.procs.append(g)
            started[name] = g
            targets[name] = gateway_target(name, label, g)
            targets[name].notes["config"] = {
                "limits": "on" if limits else NO_LIMITS,
                "audit": vcfg.get("audit", "as its base"),
            }
            for section in ("http", "tracing"):
                if section in vcfg:
                    targets[name].notes["config"][section] = vcfg[section]
    if args.gc_tuned_target:
        try:
            gw4 = start_probed_gateway(run.workdir, "gc_tuned", up_port, pool, run.workdir / "gc-target.json", True)
            run.procs.append(gw4)
            targets["gw_gc_tuned"] = gateway_target("gw_gc_tuned", "(c*) as (c), GC tuned (diagnostic)", gw4)
        except (RuntimeError, TimeoutError) as exc:
            run.unavailable["(c*) GC-tuned gateway"] = f"did not start: {str(exc)[-400:]}"
    _ready(run, targets, started)
    if "gw_workers2" in started:
        gw3 = started["gw_workers2"]
        time.sleep(1.0)  # workers, if any, start after the parent listens
        pids = process_group(gw3.proc.pid)
        if len(pids) >= 2:
            targets["gw_workers2"] = gateway_target("gw_workers2", "(e) gateway, 2 workers, Redis + PG", gw3)
            targets["gw_workers2"].notes["processes"] = len(pids)  # the supervisor and its workers
        else:
            run.unavailable["(e) gateway, workers: 2"] = (
                f"`workers: 2` started {len(pids)} process; the setting is not implemented by `gateway run` yet"
            )
            gw3.stop()
    return targets


def _ready(run: Run, targets: dict[str, Target], started: dict[str, Gateway]) -> dict[str, Target]:
    for name, g in started.items():
        ready, body = wait_ready(g)
        if name in targets:
            targets[name].notes["readyz"] = body[:500]
        if not ready:
            log(f"{name}: not ready: {body[:300]}")
    return targets


def run_rounds(targets: dict[str, Target], args: argparse.Namespace, tick_interval: float) -> Raw:
    """Every scenario, round after round, in SCENARIO_TARGETS order in even rounds and reversed in odd ones.

    JSON measurements also take the CPU budget of every process on the machine (measure_json `cpu_budget`), the
    longest event-loop lag and stall of the run, and every gateway gets a policy reload (SIGHUP) in the middle of
    the measured window (issue 22: the loop must stay free while audit, limits, health checks and a reload run)."""
    upstream_pid = targets["direct"].pid
    scenarios = SCENARIO_TARGETS
    if args.latency:
        scenarios = {scen: LATENCY_TARGETS for scen in JSON_SCENARIOS}
    raw: Raw = {scen: {n: [] for n in names if n in targets} for scen, names in scenarios.items()}
    for rnd in range(args.rounds):
        for scen in raw:
            names = list(raw[scen])
            for name in names if rnd % 2 == 0 else names[::-1]:
                t = targets[name]
                if scen == "sse":
                    res = measure_sse(t, args.sse_events, deadline=30 + args.sse_events * tick_interval * 4)
                    shown = f"{res.get('events')} events"
                else:
                    res = measure_json(
                        t,
                        JSON_SCENARIOS[scen],
                        args.duration,
                        args.warmup,
                        cpu_budget=True,
                        upstream_pid=upstream_pid,
                        reload=name.startswith("gw_"),
                    )
                    shown = f"{res.get('rps', 0):.0f} req/s errors {res.get('errors', 0)}"
                raw[scen][name].append(res)
                shown += f" p50 {res.get('p50_ms', math.nan):.3f} ms p99 {res.get('p99_ms', math.nan):.3f} ms"
                if "loop_stall_max_ms" in res:
                    shown += (
                        f" p99.9 {res.get('p999_ms', math.nan):.3f} ms loop lag {res['loop_lag_max_ms']:.2f} ms"
                        f" stall {res['loop_stall_max_ms']:.2f} ms"
                    )
                log(f"round {rnd + 1}/{args.rounds} {scen:<8} {name:<12} {res.get('error') or shown}")
                if res.get("errors"):
                    log(f"   error sample: {res.get('error_sample', '')[:200]}")
    return raw


def measure_memory(targets: dict[str, Target], streams: int, requested: int, fd_limit: int) -> dict[str, Any]:
    memory: dict[str, Any] = {}
    for name in ("gw_embedded", "bare"):
        log(f"idle streams: {streams} through {name}")
        memory[name] = measure_idle_streams(targets[name], streams, settle=2.0)
        memory[name]["fd_limit"] = fd_limit
        if streams < requested:
            memory[name]["capped_from"] = requested
        log(f"   {memory[name]}")
        time.sleep(2.0)  # let the closed streams drain before the next measurement
    return memory


def write_latency(
    args: argparse.Namespace,
    targets: dict[str, Target],
    raw: Raw,
    run: Run,
    stages: dict[str, str],
    load_at_start: list[float],
    started: float,
) -> None:
    """--latency: the tail table and issue 22's verdicts, printed and written to `args.output` (+ .md)."""
    summary = summarize(raw)
    ratios = per_round_ratios(raw)
    checks = check_issue22_targets(ratios, summary)
    labels = {n: t.label for n, t in targets.items()}
    print(render_tail(labels, summary, checks))
    holds = holds_by_holder(raw)
    print(render_holds(labels, holds))
    load_now = [round(x, 2) for x in os.getloadavg()]
    print(f"\nload average at start {load_at_start}, at end {load_now} (nproc {os.cpu_count()})")
    for name, why in run.unavailable.items():
        print(f"{name}: NOT AVAILABLE ({why})")
    result = {
        "machine": {**machine_info(args.rounds, args), "loadavg_at_start": load_at_start, "latency_only": True},
        "targets": {n: {"label": t.label, "json_url": t.json_url, "notes": t.notes} for n, t in targets.items()},
        "unavailable": run.unavailable,
        "chain_stages": stages,
        "medians": summary,
        "ratios": ratios,
        "issue22_targets": checks,
        "loop_holds_ms": holds,
        "rounds": raw,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    args.output.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    args.output.with_suffix(".md").write_text(render_latency_markdown(orjson.loads(orjson.dumps(result))))
    log(f"wrote {args.output} in {time.monotonic() - started:.0f}s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_loadgen(args.loadgen)
    args.output.parent.mkdir(parents=True, exist_ok=True)  # the profiles are written next to it before the JSON
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    hard_fds = raise_fd_limit()
    started = time.monotonic()
    # the gateway holds two sockets per relayed stream (client + upstream)
    streams = min(args.streams, max(1, (hard_fds - 512) // 2))
    run = Run(Path(tempfile.mkdtemp(prefix="mgw-bench-")), streams)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    ok = False
    try:
        log(f"workdir {run.workdir}; load average {load_at_start}")
        try:
            targets = start_targets(run, args)
        except (RuntimeError, TimeoutError) as exc:
            log(f"a required target did not start; nothing to measure:\n{exc}")
            return 1
        stages = stage_status()
        log(f"chain stages: {stages}")
        raw = run_rounds(targets, args, run.tick_interval)
        if args.latency:
            write_latency(args, targets, raw, run, stages, load_at_start, started)
            ok = True
            return 0
        memory = measure_memory(targets, streams, args.streams, hard_fds)

        profile: dict[str, Any] = {}
        for name in ("gw_embedded", "gw_redis_pg"):
            if name in targets:
                skipped = {"status": "skipped (--no-profile)"}
                profile[name] = skipped if args.no_profile else run_profile(targets[name], args, run.workdir)
        log("Redis commands per request (private redis-server)")
        redis_calls = measure_redis_round_trips(run.workdir, run.up_port, min(args.duration, 2.0))
        log(f"   {redis_calls}")
        redis_calls_nolimit = measure_redis_round_trips(run.workdir, run.up_port, min(args.duration, 2.0), limits=False)
        log(f"   without limits: {redis_calls_nolimit}")
        audit_rate = measure_audit_throughput(run.workdir, args.audit_records, args.rounds)
        log(f"   {audit_rate}")
        log("GC share of CPU under 32 connections (gc_probe), default vs tuned")
        gc_stats = measure_gc(run.workdir, run.up_port, args.duration, args.warmup)

        audit_file = run.workdir / "embedded" / "audit.jsonl"
        activity: dict[str, Any] = {
            "gw_embedded": {"audit_jsonl_lines": sum(1 for _ in audit_file.open("rb")) if audit_file.exists() else 0},
        }
        if run.backends is not None:
            activity["gw_redis_pg"] = backend_activity(run.backends)

        summary = summarize(raw)
        ratios = per_round_ratios(raw)
        checks = check_issue_targets(ratios, summary, memory)
        tail_checks = check_issue22_targets(ratios, summary)
        cpus = os.cpu_count() or 1
        budget = summarize_budget(raw)
        bounds = budget_bounds(budget, summary, cpus)
        labels = {n: t.label for n, t in targets.items()}
        print(render_table(labels, summary, ratios, memory, checks, run.unavailable))
        print(render_tail(labels, summary, tail_checks))
        holds = holds_by_holder(raw)
        print(render_holds(labels, holds))
        load_now = [round(x, 2) for x in os.getloadavg()]
        print(f"\nload average at start {load_at_start}, at end {load_now} (nproc {os.cpu_count()})")
        print(f"\nchain stages: {stages}")
        print(f"backend activity: {activity}")
        print(render_budget(labels, budget, bounds, cpus))
        print(render_costs(labels, ratios, redis_calls, redis_calls_nolimit, audit_rate))
        print(render_diagnostics(labels, redis_calls, gc_stats, profile))
        result = {
            "machine": {**machine_info(args.rounds, args), "loadavg_at_start": load_at_start},
            "targets": {n: {"label": t.label, "json_url": t.json_url, "notes": t.notes} for n, t in targets.items()},
            "unavailable": run.unavailable,
            "chain_stages": stages,
            "backend_activity": activity,
            "medians": summary,
            "ratios": ratios,
            "sse": {"interval_s": run.tick_interval, "events_per_round": args.sse_events},
            "idle_streams": memory,
            "redis_commands": redis_calls,
            "redis_commands_nolimit": redis_calls_nolimit,
            "audit_throughput": audit_rate,
            "costs": cost_rows(ratios),
            "cpu_budget_us_per_request": budget,
            "cpu_budget_bounds": bounds,
            "gc": gc_stats,
            "issue_targets": checks,
            "issue22_targets": tail_checks,
            "loop_holds_ms": holds,
            "profile": profile,
            "rounds": raw,
            "elapsed_s": round(time.monotonic() - started, 1),
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
        args.output.with_suffix(".md").write_text(render_markdown(orjson.loads(orjson.dumps(result))))
        log(f"wrote {args.output} in {time.monotonic() - started:.0f}s")
        ok = True
        return 0
    finally:
        # a failed run keeps its directory: the processes' logs say why
        run.stop(keep_workdir=args.keep_workdir or not ok)


if __name__ == "__main__":
    sys.exit(main())
