"""Load generator, run as its own process so its CPU is not the target's: prints one JSON result on stdout.

  json  URL --conns C --duration D   keep-alive POSTs of tools/call on C concurrent connections (after initialize)
  json-wrk URL --conns C --duration D  the same load sent by wrk (tests/perf/wrk_json.lua) after a Python initialize:
                                     a C load generator spends ~10x less CPU per request than this Python one, which
                                     on a 2-core machine shares the budget with the target and compresses every ratio
  sse   URL --events N               one GET event stream; latency per event = read time - time stamped upstream
  idle  URL --streams N              opens N GET event streams, prints {"ready": ...}, holds them until stdin closes

Every wait is bounded: a target that stops answering ends the run with an error, never a hang.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.perf.stats import summarize_latencies
from tests.perf.upstream import PROTOCOL_VERSION

_TS = re.compile(rb'"ts":(\d+)')
_JSON_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": PROTOCOL_VERSION,
}


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _body(method: str, rid: int, params: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})


async def initialize(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> dict[str, str]:
    """initialize + notifications/initialized; returns the headers of the session to use afterwards."""
    params = {
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"},
    }
    async with session.post(url, data=_body("initialize", 0, params), headers=headers) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise RuntimeError(f"initialize answered {resp.status}: {text[:300]}")
        sid = resp.headers.get("Mcp-Session-Id")
    out = dict(headers)
    if sid:
        out["Mcp-Session-Id"] = sid
    note = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
    async with session.post(url, data=note, headers=out) as resp:
        await resp.read()
        if resp.status not in (200, 202):
            raise RuntimeError(f"notifications/initialized answered {resp.status}")
    return out


async def run_json(url: str, headers: dict[str, str], conns: int, duration: float, warmup: float) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=conns, limit_per_host=conns)
    timeout = aiohttp.ClientTimeout(total=30)
    latencies: list[float] = []
    errors = 0
    error_sample = ""
    ids = itertools.count(1)
    served = 2  # initialize + notifications/initialized; then every answered request, warm-up included
    # our own CPU from just before the first request (interpreter start and imports left out): the bench's CPU
    # budget counts the load generator's share per request with it
    cpu_at_start = time.process_time()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        hdrs = await initialize(session, url, {**_JSON_HEADERS, **headers})
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + duration

        async def worker() -> None:
            nonlocal errors, error_sample, served
            args = {"name": "echo", "arguments": {"text": "hello"}}
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    async with session.post(url, data=_body("tools/call", next(ids), args), headers=hdrs) as resp:
                        body = await resp.read()
                        ok = resp.status == 200 and b'"result"' in body
                except (aiohttp.ClientError, TimeoutError) as exc:
                    ok, body = False, repr(exc).encode()
                t1 = time.perf_counter()
                served += 1
                if t0 < measure_from:
                    continue
                if ok:
                    latencies.append(t1 - t0)
                else:
                    errors += 1
                    error_sample = error_sample or body[:300].decode(errors="replace")

        await asyncio.gather(*(worker() for _ in range(conns)))
        elapsed = time.perf_counter() - measure_from
    cpu_s = time.process_time() - cpu_at_start
    return {
        "cpu_s": cpu_s,
        "requests": len(latencies),
        "served": served,
        "errors": errors,
        "error_sample": error_sample,
        "elapsed_s": elapsed,
        "rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        **summarize_latencies(latencies),
    }


async def run_sse(url: str, headers: dict[str, str], events: int, deadline: float) -> dict[str, Any]:
    lat: list[float] = []
    timeout = aiohttp.ClientTimeout(total=deadline)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        hdrs = await initialize(session, url, {**_JSON_HEADERS, **headers})
        get_headers = {k: v for k, v in hdrs.items() if k != "Content-Type"}
        get_headers["Accept"] = "text/event-stream"
        buf = b""
        async with session.get(url, headers=get_headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET stream answered {resp.status}: {(await resp.text())[:300]}")
            async for chunk in resp.content.iter_any():
                now = time.time_ns()
                buf += chunk
                *done, buf = buf.split(b"\n\n")
                for event in done:
                    m = _TS.search(event)
                    if m:
                        lat.append((now - int(m.group(1))) / 1e9)
                if len(lat) >= events:
                    break
    return {"events": len(lat), **summarize_latencies(lat)}


async def run_idle(url: str, headers: dict[str, str], streams: int, batch: int, hold_max: float) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        hdrs = await initialize(session, url, {**_JSON_HEADERS, **headers})
        get_headers = {k: v for k, v in hdrs.items() if k != "Content-Type"}
        get_headers["Accept"] = "text/event-stream"
        opened: list[aiohttp.ClientResponse] = []
        failures = 0
        sample = ""

        async def one() -> None:
            nonlocal failures, sample
            try:
                async with asyncio.timeout(60):
                    resp = await session.get(url, headers=get_headers)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures += 1
                sample = sample or repr(exc)
                return
            if resp.status == 200:
                opened.append(resp)
            else:
                failures += 1
                sample = sample or f"{resp.status}: {(await resp.text())[:200]}"
                resp.release()

        t0 = time.perf_counter()
        for i in range(0, streams, batch):
            await asyncio.gather(*(one() for _ in range(min(batch, streams - i))))
        ready = {"ready": len(opened), "failed": failures, "error_sample": sample, "open_s": time.perf_counter() - t0}
        sys.stdout.write(orjson.dumps(ready).decode() + "\n")
        sys.stdout.flush()
        # hold until the bench closes our stdin (or a generous bound passes)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(hold_max):
                await loop.run_in_executor(None, sys.stdin.read)
        alive = sum(1 for r in opened if not r.closed and not r.content.at_eof())
        for r in opened:
            r.close()
        sys.stdout.write(orjson.dumps({"still_open_at_end": alive}).decode() + "\n")
        sys.stdout.flush()


WRK_SCRIPT = Path(__file__).with_name("wrk_json.lua")


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _wrk(url: str, header_lines: list[str], conns: int, seconds: int) -> dict[str, Any]:
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk is not installed (make bench installs Debian's package)")
    # one wrk thread: its event loop keeps 32 connections busy at tens of thousands of requests per second, and a
    # second thread would only take more of the two cores the target needs
    argv = [exe, "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "30s", "-s", str(WRK_SCRIPT), url, "--"]
    done = subprocess.run([*argv, *header_lines], capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK-JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout)[-300:]}")
    out: dict[str, Any] = orjson.loads(line.removeprefix("WRK-JSON "))
    return out


def run_json_wrk(url: str, headers: dict[str, str], conns: int, duration: float, warmup: float) -> dict[str, Any]:
    """`run_json`'s load and result, sent by wrk: an answer counts as good, as in the Python generator, only with
    status 200 and a `"result"` in its body (tests/perf/wrk_json.lua). wrk measures latency from the first byte
    written to the last read. Its durations are whole seconds: the warm-up and the measurement are rounded up to
    at least one."""

    async def session() -> dict[str, str]:
        async with aiohttp.ClientSession() as http:
            return await initialize(http, url, {**_JSON_HEADERS, **headers})

    hdrs = asyncio.run(session())
    lines = [f"{k}: {v}" for k, v in hdrs.items()]
    served = 2  # initialize + notifications/initialized
    cpu_at_start = _children_cpu_s()
    if warmup > 0:
        served += int(_wrk(url, lines, conns, max(1, math.ceil(warmup)))["requests"])
    res = _wrk(url, lines, conns, max(1, round(duration)))
    cpu_s = _children_cpu_s() - cpu_at_start
    served += int(res["requests"])
    counts = {k: int(v) for k, v in res.items() if k.startswith("errors_")}
    errors = sum(counts.values())
    ok = max(0, int(res["requests"]) - int(res["errors_answer"]))
    elapsed = float(res["duration_us"]) / 1e6
    return {
        "cpu_s": cpu_s,
        "requests": ok,
        "served": served,
        "errors": errors,
        "error_sample": f"wrk errors: {counts}" if errors else "",
        "elapsed_s": elapsed,
        "rps": ok / elapsed if elapsed > 0 else 0.0,
        "p50_ms": res["p50_us"] / 1000.0,
        "p99_ms": res["p99_us"] / 1000.0,
        "p999_ms": res["p999_us"] / 1000.0,
        "max_ms": res["max_us"] / 1000.0,
        "loadgen": "wrk",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["json", "json-wrk", "sse", "idle"])
    parser.add_argument("url")
    parser.add_argument("--header", action="append", default=[], help="Name: value (repeatable)")
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--hold-max", type=float, default=120.0)
    args = parser.parse_args()
    headers = dict(h.split(": ", 1) for h in args.header)
    raise_fd_limit()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    if args.mode == "json-wrk":
        result = run_json_wrk(args.url, headers, args.conns, args.duration, args.warmup)
    elif args.mode == "json":
        result = asyncio.run(run_json(args.url, headers, args.conns, args.duration, args.warmup))
    elif args.mode == "sse":
        result = asyncio.run(run_sse(args.url, headers, args.events, args.deadline))
    else:
        asyncio.run(run_idle(args.url, headers, args.streams, args.batch, args.hold_max))
        return
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
