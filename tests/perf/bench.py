"""Load benchmark: direct upstream vs bare aiohttp proxy vs the gateway, measured interleaved in one run.

    python -m tests.perf.bench [--rounds N] [--duration S] [--quick] [--streams N] [--no-profile]

Every scenario is measured in rounds; within a round the targets are visited round-robin (starting one further
each round, so no target always runs first or last), and figures are medians across rounds. Ratios are medians of
per-round ratios: two measurements taken seconds apart see the same machine noise. The load generator runs in its
own process. Every process the bench starts is stopped at the end, and every wait is bounded.
See docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from tests.harness import PYTHON, ROOT, Proc, start_redis, wait_port
from tests.perf import profile as prof
from tests.perf.stats import fmt, median, parse_vmrss_kib, ratio, rss_per_stream
from tests.perf.targets import (
    Backends,
    Target,
    backend_activity,
    cleanup_backends,
    commands_delta,
    gateway_target,
    prepare_backends,
    process_group,
    redis_commands,
    stage_status,
    start_bare_proxy,
    start_bench_gateway,
    start_fast_upstream,
    wait_ready,
)

RESULTS = ROOT / "tests" / "perf" / "results" / "latest.json"
JSON_SCENARIOS = {"json_c1": 1, "json_c32": 32}
# the two-worker target only makes sense under concurrency
SCENARIO_TARGETS = {
    "json_c1": ("direct", "bare", "gw_embedded", "gw_redis_pg"),
    "json_c32": ("direct", "bare", "gw_embedded", "gw_redis_pg", "gw_workers2"),
    "sse": ("direct", "bare", "gw_embedded", "gw_redis_pg"),
}
GATEWAYS = ("gw_embedded", "gw_redis_pg", "gw_workers2")
ISSUE_TARGETS = {
    "gw_embedded_vs_bare_c32": 0.9,
    "gw_redis_pg_vs_bare_c32": 0.75,
    "added_p50_ms_c1": 1.0,
    "sse_p99_ms": 5.0,
    "rss_10k_streams_mib": 1024.0,
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children (gateway, loadgen) inherit it
    return hard


def rss_kib(pid: int) -> int:
    return parse_vmrss_kib(Path(f"/proc/{pid}/status").read_text())


def _loadgen(args: list[str], timeout: float) -> dict[str, Any]:
    argv = [PYTHON, "-m", "tests.perf.loadgen", *args]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"load generator timed out after {timeout:.0f}s"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"error": f"load generator exit {res.returncode}: {res.stderr.strip()[-500:]}"}
    out: dict[str, Any] = orjson.loads(lines[-1])
    return out


def _header_args(t: Target) -> list[str]:
    return [a for k, v in t.headers.items() for a in ("--header", f"{k}: {v}")]


def measure_json(t: Target, conns: int, duration: float, warmup: float) -> dict[str, Any]:
    args = ["json", t.json_url, "--conns", str(conns), "--duration", str(duration), "--warmup", str(warmup)]
    return _loadgen(args + _header_args(t), timeout=duration + warmup + 60)


def measure_sse(t: Target, events: int, deadline: float) -> dict[str, Any]:
    args = ["sse", t.tick_url, "--events", str(events), "--deadline", str(deadline)]
    return _loadgen(args + _header_args(t), timeout=deadline + 30)


def measure_idle_streams(t: Target, streams: int, settle: float) -> dict[str, Any]:
    """RSS of t.pid before and while the load generator holds `streams` idle SSE streams through it."""
    assert t.pid is not None
    before = rss_kib(t.pid)
    argv = [PYTHON, "-m", "tests.perf.loadgen", "idle", t.json_url, "--streams", str(streams), *_header_args(t)]
    argv += ["--hold-max", "300"]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, start_new_session=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    result: dict[str, Any] = {"requested": streams, "rss_before_kib": before}
    try:
        deadline = time.monotonic() + 60 + streams / 50
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
            elif proc.poll() is not None:
                break
        if not line.endswith(b"\n"):
            err = proc.stderr.read().decode(errors="replace")[-500:] if proc.poll() is not None and proc.stderr else ""
            result["error"] = f"streams were not all opened in time {err}".strip()
            return result
        opened = orjson.loads(line)
        result.update(opened)
        time.sleep(settle)  # let the allocator and lazily created buffers settle
        after = rss_kib(t.pid)
        result["rss_after_kib"] = after
        if opened["ready"] > 0:
            per = rss_per_stream(before, after, int(opened["ready"]))
            result["kib_per_stream"] = per
            result["projected_10k_mib"] = (before + per * 10_000) / 1024
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(5)
    return result


def measure_redis_round_trips(workdir: Path, upstream_port: int, duration: float) -> dict[str, Any]:
    """Redis commands per tools/call, counted on a private redis-server that only this gateway talks to.

    INFO commandstats also counts the commands a Lua script runs, so EVALSHA plus its inner GET/SET/TIME appear;
    client round trips are EVALSHA and the plain commands.

    The shared Redis of target (d) also serves other clients, so its counters cannot be attributed.
    """
    import redis

    try:
        inst = start_redis(workdir)
    except (RuntimeError, TimeoutError) as exc:
        return {"error": f"no private redis-server: {exc}"}
    gw = None
    try:
        cfg = {"redis": {"url": inst.url, "key_prefix": "mgwbench:"}}
        gw = start_bench_gateway(workdir, "redis_count", upstream_port, 64, cfg)
        wait_ready(gw)
        t = gateway_target("gw_redis_count", "gateway, private Redis", gw)
        measure_json(t, 1, 0.5, 0.0)  # warm: sessions, scripts loaded, pools connected
        client = redis.Redis.from_url(inst.url, socket_timeout=5)
        before = redis_commands(client.info("commandstats"))
        res = measure_json(t, 1, duration, 0.0)
        after = redis_commands(client.info("commandstats"))
        client.close()
    except (RuntimeError, TimeoutError, redis.RedisError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if gw is not None:
            gw.stop()
        inst.stop()
    if "error" in res or not res.get("requests"):
        return {"error": res.get("error", "no requests completed")}
    # the load generator's initialize + notifications/initialized also went through the chain
    calls = int(res["requests"]) + 2
    delta = commands_delta(before, after)
    return {
        "requests": calls,
        "commands_per_request": {k: v / calls for k, v in delta.items()},
        "total_per_request": sum(delta.values()) / calls,
    }


def measure_gc(workdir: Path, upstream_port: int, duration: float, warmup: float) -> dict[str, Any]:
    """Share of the gateway's CPU spent in the cyclic GC under 32 connections, as is and with the tuning suggested.

    The gateway runs under tests/perf/gc_probe.py (the same `gateway run`, plus gc.callbacks accounting).
    """
    out: dict[str, Any] = {}
    for variant in ("default", "tuned"):
        gw = start_bench_gateway(workdir, f"gc_{variant}", upstream_port, 64)
        gw.stop()  # only its config, policies and port are reused, under the probe
        stats_file = workdir / f"gc-{variant}.json"
        argv = [PYTHON, "-m", "tests.perf.gc_probe", str(stats_file)]
        argv += (["--tuned"] if variant == "tuned" else []) + ["--", "run", "--config", str(gw.config_path)]
        gw.proc = Proc(argv, workdir / f"gc-{variant}.log").start()
        snaps = [stats_file.with_name(f"{stats_file.name}.{i}") for i in (1, 2)]
        try:
            wait_port(gw.port, proc=gw.proc.popen, log=gw.proc.log)
            wait_ready(gw)
            target = gateway_target(variant, variant, gw)
            measure_json(target, 32, max(warmup, 0.5), 0.0)  # warm: connections, caches, first collections
            gw.proc.signal(signal.SIGUSR1)
            res = measure_json(target, 32, duration, 0.0)
            gw.proc.signal(signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while not snaps[1].exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        except (RuntimeError, TimeoutError) as exc:
            out[variant] = {"error": str(exc)[-300:]}
            continue
        finally:
            gw.proc.stop()
        if "error" in res or not all(p.exists() for p in snaps):
            out[variant] = {"error": res.get("error", "no GC snapshots written")}
            continue
        before, after = (orjson.loads(p.read_bytes()) for p in snaps)
        gens = {
            g: {k: after["generations"][g][k] - before["generations"][g][k] for k in ("collections", "seconds")}
            for g in after["generations"]
        }
        gc_s = sum(v["seconds"] for v in gens.values())
        cpu_s = after["cpu_seconds"] - before["cpu_seconds"]
        requests = int(res["requests"]) + 2  # + initialize and notifications/initialized
        out[variant] = {
            "gc_share_of_cpu": gc_s / cpu_s if cpu_s > 0 else math.nan,
            "gc_us_per_request": gc_s / requests * 1e6,
            "cpu_us_per_request": cpu_s / requests * 1e6,
            "generations": gens,
            "thresholds": after["thresholds"],
            "live_objects": after["live_objects"],
            "rps_single_sample": res["rps"],
            "p99_ms_single_sample": res["p99_ms"],
        }
    return out


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
        "git_commit": commit,
        # the machine is shared: a high load average means other work competed with every target
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "rounds": rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "quick": args.quick,
    }


# ------------------------------------------------------------------------------------------------ reporting


def summarize(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per scenario and target: median across rounds of each figure (failed rounds are left out)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for scen, per_target in raw.items():
        out[scen] = {}
        for name, rounds in per_target.items():
            ok = [r for r in rounds if "error" not in r]
            keys = ("rps", "p50_ms", "p99_ms") if scen != "sse" else ("p50_ms", "p99_ms", "max_ms")
            fig = {k: median([float(r[k]) for r in ok if r.get(k) is not None]) for k in keys}
            fig["ok_rounds"] = float(len(ok))
            fig["errors"] = float(sum(int(r.get("errors", 0)) for r in ok))
            out[scen][name] = fig
    return out


def per_round_ratios(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, float]:
    """Medians of ratios taken within each round (paired measurements)."""

    def paired(scen: str, a: str, b: str, key: str, op: str) -> float:
        ra, rb = raw.get(scen, {}).get(a, []), raw.get(scen, {}).get(b, [])
        vals = []
        for x, y in zip(ra, rb, strict=False):
            if "error" in x or "error" in y or x.get(key) is None or y.get(key) is None:
                continue
            vals.append(ratio(float(x[key]), float(y[key])) if op == "/" else float(x[key]) - float(y[key]))
        return median(vals)

    out: dict[str, float] = {}
    for gw in GATEWAYS:
        for base in ("direct", "bare"):
            for scen in ("json_c1", "json_c32"):
                out[f"{gw}_vs_{base}_rps_{scen}"] = paired(scen, gw, base, "rps", "/")
        out[f"{gw}_added_p50_ms_c1"] = paired("json_c1", gw, "direct", "p50_ms", "-")
        out[f"{gw}_added_p50_ms_vs_bare_c1"] = paired("json_c1", gw, "bare", "p50_ms", "-")
    # what a second worker buys over one, same backends
    out["gw_workers2_vs_gw_redis_pg_rps_json_c32"] = paired("json_c32", "gw_workers2", "gw_redis_pg", "rps", "/")
    out["bare_vs_direct_rps_json_c32"] = paired("json_c32", "bare", "direct", "rps", "/")
    out["bare_added_p50_ms_c1"] = paired("json_c1", "bare", "direct", "p50_ms", "-")
    return out


def check_issue_targets(
    ratios: dict[str, float], summary: dict[str, dict[str, dict[str, float]]], memory: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    def entry(value: float, goal: float, higher_is_better: bool) -> dict[str, Any]:
        met = None if math.isnan(value) else (value >= goal if higher_is_better else value < goal)
        return {"value": value, "goal": goal, "met": met}

    gw_mem = memory.get("gw_embedded", {})
    return {
        "gw_embedded_vs_bare_c32": entry(ratios.get("gw_embedded_vs_bare_rps_json_c32", math.nan), 0.9, True),
        "gw_redis_pg_vs_bare_c32": entry(ratios.get("gw_redis_pg_vs_bare_rps_json_c32", math.nan), 0.75, True),
        "added_p50_ms_c1": entry(ratios.get("gw_embedded_added_p50_ms_c1", math.nan), 1.0, False),
        "sse_p99_ms": entry(summary.get("sse", {}).get("gw_embedded", {}).get("p99_ms", math.nan), 5.0, False),
        "rss_10k_streams_mib": entry(float(gw_mem.get("projected_10k_mib", math.nan)), 1024.0, False),
    }


def render_table(
    labels: dict[str, str],
    summary: dict[str, dict[str, dict[str, float]]],
    ratios: dict[str, float],
    memory: dict[str, Any],
    checks: dict[str, dict[str, Any]],
    unavailable: dict[str, str],
) -> str:
    lines: list[str] = []
    add = lines.append
    for scen, title in (("json_c1", "tools/call, 1 connection"), ("json_c32", "tools/call, 32 connections")):
        add(f"\n== {title} (medians across rounds)")
        add(f"{'target':<44}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'rounds':>8}")
        for name, fig in summary.get(scen, {}).items():
            add(
                f"{labels[name]:<44}{fmt(fig['rps'], 0):>10}{fmt(fig['p50_ms'], 3):>9}{fmt(fig['p99_ms'], 3):>9}"
                f"{int(fig['errors']):>8}{int(fig['ok_rounds']):>8}"
            )
    add("\n== SSE relay latency (upstream write -> client read)")
    add(f"{'target':<44}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, fig in summary.get("sse", {}).items():
        add(f"{labels[name]:<44}{fmt(fig['p50_ms'], 3):>9}{fmt(fig['p99_ms'], 3):>9}{fmt(fig['max_ms'], 3):>9}")
    add("\n== ratios (medians of per-round ratios)")
    for gw in GATEWAYS:
        if gw not in summary.get("json_c32", {}):
            continue
        add(
            f"{labels[gw]:<44} c32 x/direct {fmt(ratios[f'{gw}_vs_direct_rps_json_c32'])}"
            f"  x/bare {fmt(ratios[f'{gw}_vs_bare_rps_json_c32'])}"
        )
        if gw == "gw_workers2":
            add(f"{'':<44} c32 x/one worker (d) {fmt(ratios['gw_workers2_vs_gw_redis_pg_rps_json_c32'])}")
        if gw in summary.get("json_c1", {}):
            add(
                f"{'':<44} c1  x/direct {fmt(ratios[f'{gw}_vs_direct_rps_json_c1'])}"
                f"  x/bare {fmt(ratios[f'{gw}_vs_bare_rps_json_c1'])}"
                f"  added p50 over direct {fmt(ratios[f'{gw}_added_p50_ms_c1'], 3)} ms"
            )
    add(
        f"{labels['bare']:<44} c32 x/direct {fmt(ratios['bare_vs_direct_rps_json_c32'])}"
        f"  added p50 c1 {fmt(ratios['bare_added_p50_ms_c1'], 3)} ms"
    )
    add("\n== idle SSE streams held by one process")
    for name, m in memory.items():
        if "kib_per_stream" in m:
            add(
                f"{labels[name]:<44} {m['ready']} streams ({m['failed']} failed): "
                f"RSS {m['rss_before_kib'] / 1024:.0f} -> {m['rss_after_kib'] / 1024:.0f} MiB, "
                f"{m['kib_per_stream']:.1f} KiB/stream, projected 10k streams {m['projected_10k_mib']:.0f} MiB"
            )
        else:
            add(f"{labels[name]:<44} {m.get('error', m)}")
    for name, why in unavailable.items():
        add(f"\n{name}: NOT AVAILABLE ({why})")
    add("\n== issue 9 targets")
    for key, c in checks.items():
        verdict = {True: "met", False: "NOT met", None: "not measured"}[c["met"]]
        add(f"{key:<28} {fmt(c['value'], 3):>10}  goal {c['goal']:<8} {verdict}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.perf.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=None, help="rounds per scenario (default 3; quick 2)")
    p.add_argument("--duration", type=float, default=None, help="seconds per measurement (default 4; quick 1)")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each measurement")
    p.add_argument("--quick", action="store_true", help="short sanity run")
    p.add_argument("--streams", type=int, default=None, help="idle SSE streams for the memory scenario (2000)")
    p.add_argument("--sse-events", type=int, default=None, help="events per SSE latency measurement (200)")
    p.add_argument("--profile-seconds", type=float, default=None, help="py-spy profile length (10; quick 3)")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    q = args.quick
    args.rounds = args.rounds or (2 if q else 3)
    args.duration = args.duration or (1.0 if q else 4.0)
    args.streams = args.streams or (200 if q else 2000)
    args.sse_events = args.sse_events or (50 if q else 200)
    args.profile_seconds = args.profile_seconds or (3.0 if q else 10.0)
    if args.rounds < 1 or args.duration <= 0 or args.streams < 1:
        p.error("--rounds, --duration and --streams must be positive")
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds through main's `finally`, which stops every process the bench started
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    hard_fds = raise_fd_limit()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="mgw-bench-"))
    procs: list[Any] = []
    backends: Backends | None = None
    unavailable: dict[str, str] = {}
    # the gateway holds two sockets per relayed stream (client + upstream)
    max_streams = max(1, (hard_fds - 512) // 2)
    streams = min(args.streams, max_streams)
    tick_interval = 0.005
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    try:
        log(f"workdir {workdir}; load average {load_at_start}")
        upstream, up_port = start_fast_upstream(workdir, tick_interval, args.sse_events)
        procs.append(upstream)
        bare, bare_port = start_bare_proxy(workdir, up_port)
        procs.append(bare)
        pool = streams + 256
        targets: dict[str, Target] = {
            "direct": Target(
                "direct",
                "(a) direct to upstream",
                f"http://127.0.0.1:{up_port}/mcp",
                f"http://127.0.0.1:{up_port}/tick",
                pid=upstream.pid,
            ),
            "bare": Target(
                "bare",
                "(b) bare aiohttp proxy",
                f"http://127.0.0.1:{bare_port}/mcp",
                f"http://127.0.0.1:{bare_port}/tick",
                pid=bare.pid,
            ),
        }
        try:
            gw = start_bench_gateway(workdir, "embedded", up_port, pool)
        except (RuntimeError, TimeoutError) as exc:
            log(f"the gateway did not start; nothing to measure:\n{exc}")
            return 1
        procs.append(gw)
        targets["gw_embedded"] = gateway_target("gw_embedded", "(c) gateway, embedded backends", gw)

        backends = prepare_backends()
        cfg: dict[str, Any] = {"redis": {"url": backends.redis_url, "key_prefix": backends.key_prefix}}
        if backends.pg_dsn is not None:
            cfg["postgres"] = {"dsn": backends.pg_dsn}
            cfg["audit"] = {"sink": "postgres"}
        started_gws = {"gw_embedded": gw}
        try:
            gw2 = start_bench_gateway(workdir, "redis_pg", up_port, pool, cfg)
            procs.append(gw2)
            started_gws["gw_redis_pg"] = gw2
            targets["gw_redis_pg"] = gateway_target("gw_redis_pg", "(d) gateway, Redis + PostgreSQL", gw2)
            targets["gw_redis_pg"].notes["backends"] = backends.notes
        except (RuntimeError, TimeoutError) as exc:
            unavailable["(d) gateway, Redis + PostgreSQL"] = f"did not start: {str(exc)[-400:]}"
        try:
            # without Redis each worker keeps its own session bindings, so a session initialized on one worker is
            # unknown to the other (docs/operations.md): two workers share state through Redis, like (d)
            cfg3 = {**cfg, "workers": 2, "redis": {**cfg["redis"], "key_prefix": backends.key_prefix + "w2:"}}
            gw3 = start_bench_gateway(workdir, "workers2", up_port, pool, cfg3)
            procs.append(gw3)
            started_gws["gw_workers2"] = gw3
        except (RuntimeError, TimeoutError) as exc:
            unavailable["(e) gateway, workers: 2"] = f"did not start: {str(exc)[-400:]}"
        for name, g in started_gws.items():
            ready, body = wait_ready(g)
            if name in targets:
                targets[name].notes["readyz"] = body[:500]
            if not ready:
                log(f"{name}: not ready: {body[:300]}")
        if "gw_workers2" in started_gws:
            gw3 = started_gws["gw_workers2"]
            time.sleep(1.0)  # workers, if any, start after the parent listens
            pids = process_group(gw3.proc.pid)
            if len(pids) >= 2:
                targets["gw_workers2"] = gateway_target("gw_workers2", "(e) gateway, 2 workers, Redis + PG", gw3)
                targets["gw_workers2"].notes["processes"] = len(pids)  # the supervisor and its workers
            else:
                unavailable["(e) gateway, workers: 2"] = (
                    f"`workers: 2` started {len(pids)} process; the setting is not implemented by `gateway run` yet"
                )
                gw3.stop()
        stages = stage_status()
        log(f"chain stages: {stages}")

        raw: dict[str, dict[str, list[dict[str, Any]]]] = {
            scen: {n: [] for n in names if n in targets} for scen, names in SCENARIO_TARGETS.items()
        }
        for rnd in range(args.rounds):
            for scen in ("json_c1", "json_c32", "sse"):
                names = list(raw[scen])
                shift = rnd % len(names)
                for name in names[shift:] + names[:shift]:
                    t = targets[name]
                    if scen == "sse":
                        res = measure_sse(t, args.sse_events, deadline=30 + args.sse_events * tick_interval * 4)
                    else:
                        res = measure_json(t, JSON_SCENARIOS[scen], args.duration, args.warmup)
                    raw[scen][name].append(res)
                    shown = res.get("error") or (
                        f"{res.get('rps', 0):.0f} req/s p50 {res.get('p50_ms', math.nan):.3f} ms "
                        f"p99 {res.get('p99_ms', math.nan):.3f} ms errors {res.get('errors', 0)}"
                        if scen != "sse"
                        else f"{res.get('events')} events p50 {res.get('p50_ms', math.nan):.3f} ms "
                        f"p99 {res.get('p99_ms', math.nan):.3f} ms"
                    )
                    log(f"round {rnd + 1}/{args.rounds} {scen:<8} {name:<12} {shown}")
                    if res.get("errors"):
                        log(f"   error sample: {res.get('error_sample', '')[:200]}")

        memory: dict[str, Any] = {}
        for name in ("gw_embedded", "bare"):
            log(f"idle streams: {streams} through {name}")
            memory[name] = measure_idle_streams(targets[name], streams, settle=2.0)
            memory[name]["fd_limit"] = hard_fds
            if streams < args.streams:
                memory[name]["capped_from"] = args.streams
            log(f"   {memory[name]}")
            time.sleep(2.0)  # let the closed streams drain before the next measurement

        profile: dict[str, Any] = {}
        for name in ("gw_embedded", "gw_redis_pg"):
            if name not in targets:
                continue
            if args.no_profile:
                profile[name] = {"status": "skipped (--no-profile)"}
            else:
                profile[name] = run_profile(targets[name], args, workdir)

        log("Redis commands per request (private redis-server)")
        redis_calls = measure_redis_round_trips(workdir, up_port, min(args.duration, 2.0))
        log(f"   {redis_calls}")

        log("GC share of CPU under 32 connections (gc_probe), default vs tuned")
        gc_stats = measure_gc(workdir, up_port, args.duration, args.warmup)
        log(f"   { {k: v.get('gc_share_of_cpu', v.get('error')) for k, v in gc_stats.items()} }")

        audit_file = workdir / "embedded" / "audit.jsonl"
        activity = {
            "gw_embedded": {"audit_jsonl_lines": sum(1 for _ in audit_file.open("rb")) if audit_file.exists() else 0},
            "gw_redis_pg": backend_activity(backends),
        }

        summary = summarize(raw)
        ratios = per_round_ratios(raw)
        checks = check_issue_targets(ratios, summary, memory)
        labels = {n: t.label for n, t in targets.items()}
        table = render_table(labels, summary, ratios, memory, checks, unavailable)
        print(table)
        load_now = [round(x, 2) for x in os.getloadavg()]
        print(f"\nload average at start {load_at_start}, at end {load_now} (nproc {os.cpu_count()})")
        print(f"\nchain stages: {stages}")
        print(f"backend activity: {activity}")
        print(f"Redis commands per tools/call (private Redis): {redis_calls}")
        for variant, g in gc_stats.items():
            if "error" in g:
                print(f"GC ({variant}): {g['error']}")
                continue
            gens = ", ".join(
                f"gen{k} {v['collections']}x {v['seconds'] * 1000:.0f} ms" for k, v in g["generations"].items()
            )
            print(
                f"GC ({variant}, thresholds {g['thresholds']}): {g['gc_share_of_cpu']:.1%} of the gateway's CPU, "
                f"{g['gc_us_per_request']:.0f} of {g['cpu_us_per_request']:.0f} CPU us/request ({gens}); "
                f"single-sample {g['rps_single_sample']:.0f} req/s"
            )
        for name, pr in profile.items():
            if not pr.get("top_self"):
                print(f"\nprofile of {labels[name]}: {pr.get('status')}")
                continue
            print(f"\n== py-spy profile of {labels[name]} under 32 connections")
            print("samples by thread: " + ", ".join(f"{r['function']} {r['share']:.0%}" for r in pr["threads"]))
            print("top self time in the event-loop thread (share of that thread's samples):")
            for row in pr["top_self_main_thread"][:15]:
                print(f"{row['share'] * 100:6.1f}%  {row['function']}")
            print("gateway code, inclusive of callees (share of all samples):")
            for row in pr["top_inclusive_gateway"][:15]:
                print(f"{row['share'] * 100:6.1f}%  {row['function']}")
        result = {
            "machine": {**machine_info(args.rounds, args), "loadavg_at_start": load_at_start},
            "targets": {n: {"label": t.label, "json_url": t.json_url, "notes": t.notes} for n, t in targets.items()},
            "unavailable": unavailable,
            "chain_stages": stages,
            "backend_activity": activity,
            "medians": summary,
            "ratios": ratios,
            "sse": {"interval_s": tick_interval, "events_per_round": args.sse_events},
            "idle_streams": memory,
            "redis_commands": redis_calls,
            "gc": gc_stats,
            "issue_targets": checks,
            "profile": profile,
            "rounds": raw,
            "elapsed_s": round(time.monotonic() - started, 1),
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
        log(f"wrote {args.output} in {time.monotonic() - started:.0f}s")
        return 0
    finally:
        for p in reversed(procs):
            with contextlib.suppress(Exception):
                p.stop()
        if backends is not None:
            cleanup_backends(backends)


def run_profile(t: Target, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """py-spy on the embedded gateway while the load generator drives it at 32 connections."""
    py_spy = prof.find_py_spy()
    if py_spy is None or t.pid is None:
        return {"status": "py-spy not installed (.venv/bin/pip install py-spy)"}
    log(f"profiling {t.name} for {args.profile_seconds:.0f}s under 32 connections")
    out = workdir / f"profile-{t.name}.txt"
    argv = [PYTHON, "-m", "tests.perf.loadgen", "json", t.json_url, "--conns", "32", "--warmup", "0"]
    argv += ["--duration", str(args.profile_seconds + 3), *_header_args(t)]
    load = Proc(argv, workdir / f"profile-load-{t.name}.log").start()
    try:
        time.sleep(1.0)
        ok, msg = prof.record(py_spy, t.pid, args.profile_seconds, out)
    finally:
        load.stop(timeout=args.profile_seconds + 30)
    if not ok:
        return {"status": msg}
    parsed = prof.parse_collapsed(out.read_text())
    total = int(parsed["samples"])
    saved = args.output.parent / f"profile-{t.name}.collapsed.txt"
    saved.write_text(out.read_text())
    return {
        "status": "ok",
        "samples": total,
        "collapsed_stacks": str(saved.relative_to(ROOT)) if saved.is_relative_to(ROOT) else str(saved),
        "threads": prof.top(parsed["threads"], total, 10),
        "main_thread_samples": sum(parsed["main_self"].values()),
        "top_self_main_thread": prof.top(parsed["main_self"], sum(parsed["main_self"].values()), 30),
        "top_self": prof.top(parsed["self"], total, 30),
        "top_inclusive": prof.top(parsed["inclusive"], total, 40),
        # where the gateway's own code spends (callees included): chain stages, observers, forwarder
        "top_inclusive_gateway": [
            row for row in prof.top(parsed["inclusive"], total, 400) if "(gateway/" in row["function"]
        ][:25],
    }


if __name__ == "__main__":
    sys.exit(main())
