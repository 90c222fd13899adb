"""Runs `gateway run` with a garbage-collector probe: time spent in each GC generation, written at exit.

    python -m tests.perf.gc_probe STATS_JSON [--tuned] -- <mcp-gateway arguments>

SIGUSR1 writes a snapshot of the counters to STATS_JSON.<n> (n = 1, 2, ...), so a caller can take the difference
over a load window and leave startup (imports, policy compilation) out.

A diagnostic only (the benchmark's targets run plain `python -m gateway run`): it answers how much of the event
loop's time goes to the cyclic GC. `--tuned` applies what the report suggests (higher thresholds, startup objects
frozen out of the collector's reach) so the two can be compared.
"""

from __future__ import annotations

import atexit
import gc
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

# generation -> [collections, CPU seconds of the collecting thread, objects collected, longest single collection
# since the previous snapshot]; thread CPU time, not wall time, so a busy shared machine preempting the process does
# not inflate the figure. The longest collection is how long the GC held the event loop at once (issue 22)
_ACC: dict[int, list[float]] = {0: [0, 0.0, 0, 0.0], 1: [0, 0.0, 0, 0.0], 2: [0, 0.0, 0, 0.0]}
_STARTED: list[float] = [0.0]


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _STARTED[0] = time.thread_time()
        return
    acc = _ACC[int(info["generation"])]
    took = time.thread_time() - _STARTED[0]
    acc[0] += 1
    acc[1] += took
    acc[2] += int(info["collected"])
    acc[3] = max(acc[3], took)


def _stats() -> dict[str, Any]:
    return {
        "generations": {
            str(g): {"collections": v[0], "seconds": v[1], "collected": v[2], "max_pause_seconds": v[3]}
            for g, v in _ACC.items()
        },
        "cpu_seconds": time.process_time(),
        "live_objects": len(gc.get_objects()),
        "thresholds": list(gc.get_threshold()),
    }


def _dump(path: Path) -> None:
    path.write_text(json.dumps(_stats()))


def main() -> int:
    out = Path(sys.argv[1])
    rest = sys.argv[2:]
    tuned = "--tuned" in rest[: rest.index("--")] if "--" in rest else False
    args = rest[rest.index("--") + 1 :] if "--" in rest else rest
    gc.callbacks.append(_callback)
    atexit.register(_dump, out)
    snapshots = [0]

    def _snapshot(signum: int, frame: object) -> None:
        snapshots[0] += 1
        _dump(out.with_name(f"{out.name}.{snapshots[0]}"))
        for acc in _ACC.values():
            acc[3] = 0.0  # the next snapshot's longest collection is the one since this one

    signal.signal(signal.SIGUSR1, _snapshot)
    from gateway.cli import main as gateway_main

    if tuned:
        import gateway.app
        import gateway.server  # noqa: F401  (imported so their objects are frozen too)

        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
    return gateway_main(args)


if __name__ == "__main__":
    sys.exit(main())
