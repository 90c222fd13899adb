"""Diagnostics printed after the table: Redis commands per request, GC share, py-spy profile of the hot path."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from tests.harness import PYTHON, ROOT, Gateway, Proc, start_redis, wait_port
from tests.perf import profile as prof
from tests.perf.measure import header_args, log, measure_json
from tests.perf.stats import median
from tests.perf.targets import (
    Target,
    commands_delta,
    create_database,
    drop_database,
    gateway_target,
    migrate,
    redis_commands,
    start_bench_gateway,
    wait_ready,
)


def measure_redis_round_trips(
    workdir: Path, upstream_port: int, duration: float, limits: bool = True
) -> dict[str, Any]:
    """Redis commands per tools/call, counted on a private redis-server that only this gateway talks to.

    INFO commandstats also counts the commands a Lua script runs, so EVALSHA plus its inner GET/SET/TIME appear;
    client round trips are EVALSHA and the plain commands. `limits=False`: the gateway of (d-nolimit), so the
    difference is the limiter's share.

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
        name = "redis_count" if limits else "redis_count_nolimit"
        gw = start_bench_gateway(workdir, name, upstream_port, 64, cfg, limits=limits)
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


def start_probed_gateway(
    workdir: Path, name: str, upstream_port: int, pool: int, stats_file: Path, tuned: bool
) -> Gateway:
    """A bench gateway run under tests/perf/gc_probe.py (optionally with the suggested GC tuning), ready."""
    gw = start_bench_gateway(workdir, name, upstream_port, pool)
    gw.stop()  # only its config, policies and port are reused, under the probe
    argv = [PYTHON, "-m", "tests.perf.gc_probe", str(stats_file)]
    argv += (["--tuned"] if tuned else []) + ["--", "run", "--config", str(gw.config_path)]
    gw.proc = Proc(argv, workdir / f"{name}-probe.log").start()
    try:
        wait_port(gw.port, proc=gw.proc.popen, log=gw.proc.log)
        wait_ready(gw)
    except (RuntimeError, TimeoutError):
        gw.proc.stop()
        raise
    return gw


def measure_gc(workdir: Path, upstream_port: int, duration: float, warmup: float) -> dict[str, Any]:
    """Share of the gateway's CPU spent in the cyclic GC under 32 connections, as is and with the tuning suggested.

    The gateway runs under tests/perf/gc_probe.py (the same `gateway run`, plus gc.callbacks accounting).
    """
    out: dict[str, Any] = {}
    for variant in ("default", "tuned"):
        stats_file = workdir / f"gc-{variant}.json"
        snaps = [stats_file.with_name(f"{stats_file.name}.{i}") for i in (1, 2)]
        try:
            gw = start_probed_gateway(workdir, f"gc_{variant}", upstream_port, 64, stats_file, variant == "tuned")
        except (RuntimeError, TimeoutError) as exc:
            out[variant] = {"error": str(exc)[-300:]}
            continue
        try:
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
        for g, v in gens.items():
            # the longest single collection in the window: how long the GC held the event loop at once
            v["max_pause_ms"] = after["generations"][g].get("max_pause_seconds", math.nan) * 1000
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


def run_profile(t: Target, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """py-spy on the embedded gateway while the load generator drives it at 32 connections."""
    py_spy = prof.find_py_spy()
    if py_spy is None or t.pid is None:
        return {"status": "py-spy not installed (.venv/bin/pip install py-spy)"}
    log(f"profiling {t.name} for {args.profile_seconds:.0f}s under 32 connections")
    out = workdir / f"profile-{t.name}.txt"
    argv = [PYTHON, "-m", "tests.perf.loadgen", "json", t.json_url, "--conns", "32", "--warmup", "0"]
    argv += ["--duration", str(args.profile_seconds + 3), *header_args(t)]
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


def run_bounded(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int | None, str, str]:
    """Run argv in its own process group; past `timeout` the whole group is killed. (exit code or None, out, err)."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        return None, out or "", err or ""


def _audit_runs(sink: str, extra: list[str], records: int, repeats: int, tmp: Path, timeout: float) -> dict[str, Any]:
    """`repeats` runs of tests/perf/audit_rate.py; median rows/s and observe() cost, and every run."""
    runs: list[dict[str, Any]] = []
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        for _ in range(repeats):
            argv = [PYTHON, "-m", "tests.perf.audit_rate", sink, "--records", str(records), *extra]
            # the helper's mkdtemp directories land in tmp, removed below whatever happens
            code, out, err = run_bounded(argv, timeout, {"TMPDIR": str(tmp)})
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if code is None:
                runs.append({"error": f"timed out after {timeout:.0f}s"})
            elif code != 0 or not lines:
                runs.append({"error": f"exit {code}: {err.strip()[-400:]}"})
            else:
                runs.append(orjson.loads(lines[-1]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"] if runs else "not run", "runs": runs}
    return {
        "rows_per_second": median([float(r["rows_per_second"]) for r in ok]),
        "observe_ns": median([float(r["observe_ns"]) for r in ok]),
        "records": records,
        "runs": runs,
    }


def measure_audit_throughput(workdir: Path, records: int, repeats: int, timeout: float = 120.0) -> dict[str, Any]:
    """Audit rows/s through the gateway's real pipeline (gateway/audit/throughput.py), file sink and PostgreSQL.

    Each run is a subprocess bounded by `timeout`. PostgreSQL: a fresh database created and migrated here like
    target (d)'s, dropped at the end even if a run was killed. The helper runs with `log_records: false` (no
    structured-log line per record, unlike the gateway's default) and one writer.
    """
    out: dict[str, Any] = {"log_records": False}
    log(f"audit throughput: file sink, {records} records x {repeats}")
    out["file"] = _audit_runs("file", [], records, repeats, workdir / "audit-rate-file", timeout)
    db_name = f"mgw_bench_audit_{secrets.token_hex(4)}"
    try:
        try:
            dsn = create_database(db_name)
        except Exception as exc:
            out["postgres"] = {"error": f"PostgreSQL unavailable: {type(exc).__name__}: {exc}"}
            return out
        migrated = migrate(dsn)
        if migrated != "ok":
            out["postgres"] = {"error": f"migrate: {migrated}"}
            return out
        log(f"audit throughput: PostgreSQL sink (database {db_name}), {records} records x {repeats}")
        out["postgres"] = _audit_runs(
            "postgres", ["--dsn", dsn], records, repeats, workdir / "audit-rate-postgres", timeout
        )
        out["postgres"]["database"] = f"{db_name} (created, migrated, dropped)"
    finally:
        drop_database(db_name)
    return out
