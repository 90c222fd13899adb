"""CPU per request of the gateway at another commit and at this checkout, measured back to back on this machine.

    .venv/bin/python -m tests.perf.ab BASE [--rounds 3] [--duration 15] [--config '{"audit": {"journal": false}}']

Issue 17 asks that a change cost no more than 3% CPU per request. Figures from different days cannot say that on a
shared machine whose speed varies by a factor of three, and a run recorded on another CPU model cannot either; two
trees measured alternately in one sitting can. This checks BASE out into a temporary git worktree, then per round
measures each tree's bench gateway (target (c) of `make bench`: full chain, embedded backends, tests/perf/targets.py
of *that* tree) against its own fast upstream under `wrk` at 32 connections: the gateway process's CPU time (all its
threads) over the requests it answered. Both trees run on this checkout's virtualenv, so the libraries are the same
and only the code differs. `--config` adds settings to this checkout's gateway only (to price one feature: the
audit journal, say). Prints every round and the medians, and the ratio this/BASE.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from tests.harness import ROOT

# one measurement, run by the tree's own interpreter state: its tests/perf/targets.py starts the gateway
_MEASURE = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from pathlib import Path
    root, work, duration, extra = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    sys.path.insert(0, str(root))
    os.chdir(root)
    from tests.perf import targets as T
    from tests.harness import Proc, free_port, wait_port
    port = free_port()
    up = Proc([sys.executable, "-m", "tests.perf.upstream", "--port", str(port)], work / "upstream.log").start()
    try:
        wait_port(port, proc=up.popen, log=up.log)
        gw = T.start_bench_gateway(work, "gw", port, 64, config=extra)
        try:
            ok, body = T.wait_ready(gw)
            assert ok, body
            def cpu(pid):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            cmd = [sys.executable, "-m", "tests.perf.loadgen", "json-wrk", gw.url("bench"), "--conns", "32"]
            for k, v in gw.auth("bench").items():
                cmd += ["--header", f"{k}: {v}"]
            subprocess.run([*cmd, "--duration", "3", "--warmup", "1"], cwd=os.environ["AB_LOADGEN_ROOT"],
                           capture_output=True, check=True)
            before = cpu(gw.proc.pid)
            out = subprocess.run([*cmd, "--duration", duration, "--warmup", "0"], cwd=os.environ["AB_LOADGEN_ROOT"],
                                 capture_output=True, text=True, check=True).stdout
            used = cpu(gw.proc.pid) - before
            res = json.loads(out.strip().splitlines()[-1])
            print(json.dumps({"rps": res["rps"], "served": res["served"], "errors": res["errors"],
                              "cpu_us_per_request": used * 1e6 / max(1, res["served"])}))
        finally:
            gw.stop()
    finally:
        up.stop()
    """
)


def measure(tree: Path, workdir: Path, duration: float, extra: dict[str, object]) -> dict[str, float]:
    workdir.mkdir(parents=True)
    env = {**os.environ, "AB_LOADGEN_ROOT": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tree), str(workdir), str(duration), json.dumps(extra)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=duration + 180,
    )
    if done.returncode != 0:
        raise SystemExit(f"measurement of {tree} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise SystemExit(f"{tree}: {result['errors']} errors under load; the figures would not be comparable")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the commit to compare with (any git revision)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per tree and round")
    parser.add_argument("--config", default="{}", help="JSON settings added to this checkout's gateway only")
    args = parser.parse_args()
    extra = json.loads(args.config)
    with tempfile.TemporaryDirectory(prefix="mgw-ab-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base], check=True)
        try:
            runs: dict[str, list[float]] = {"base": [], "this": []}
            for r in range(1, args.rounds + 1):
                for name, tree, cfg in (("base", base, {}), ("this", ROOT, extra)):
                    res = measure(tree, Path(tmp) / f"{name}-{r}", args.duration, cfg)
                    runs[name].append(res["cpu_us_per_request"])
                    print(
                        f"round {r} {name:4} {res['rps']:8.0f} req/s  {res['cpu_us_per_request']:6.1f} us CPU/request",
                        flush=True,
                    )
            med = {k: statistics.median(v) for k, v in runs.items()}
            print(
                f"median CPU per request: base {args.base} {med['base']:.1f} us, this checkout {med['this']:.1f} us,"
                f" ratio {med['this'] / med['base']:.3f}"
            )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
