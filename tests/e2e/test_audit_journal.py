"""SIGKILL under load: every answered call still has exactly one audit record (issue 15, item 4).

The writer is held back (a huge batch, a long flush interval), so at the kill every record of the run sits in the
in-memory queue: without the journal all of them are lost (the control test shows it), with it the next process
on the same audit paths records each answered call once, and the file's hash chains still verify."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.harness import PYTHON, ROOT, Gateway, default_policies, start_gateway, start_upstream

pytestmark = pytest.mark.e2e

KEYS = {"k1": {"tenant": "acme", "scopes": ["read", "write"]}}
HELD_WRITER = {"batch_size": 100000, "flush_interval": 60, "log_records": False}
INIT = {
    "jsonrpc": "2.0",
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


async def _load(gw: Gateway, answered: dict[str, int], stop: asyncio.Event) -> None:
    """Keep-alive clients sending calls (most allowed, some with a wrong key) until the gateway dies."""
    good = {**gw.auth("k1"), "Accept": "application/json, text/event-stream"}
    bad = {"Authorization": "Bearer mgw_nope", "Accept": "application/json, text/event-stream"}
    counter = itertools.count()

    async def client() -> None:
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                i = next(counter)
                rid = f"j-{uuid.uuid4().hex}"
                headers = {**(bad if i % 5 == 0 else good), "X-Request-ID": rid}
                try:
                    async with http.post(gw.url(), json={**INIT, "id": i}, headers=headers) as resp:
                        # the status line counts as an answer, whether the body arrives or not
                        answered[rid] = resp.status
                        await resp.read()
                except (TimeoutError, aiohttp.ClientError):
                    if not stop.is_set():
                        await asyncio.sleep(0.01)

    await asyncio.gather(*(client() for _ in range(8)))


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


async def _kill_under_load(tmp_path: Path, journal: bool) -> tuple[dict[str, int], Path, Gateway]:
    up = start_upstream(tmp_path, json_response=True)
    cfg = {"audit": {**HELD_WRITER, "journal": journal}}
    gw = start_gateway(tmp_path / "gw", default_policies(up.url), keys=KEYS, config=cfg)
    answered: dict[str, int] = {}
    stop = asyncio.Event()
    load = asyncio.create_task(_load(gw, answered, stop))
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while len(answered) < 300 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        gw.proc.kill()  # SIGKILL mid-load
        stop.set()
        await asyncio.wait_for(load, 30)
    finally:
        stop.set()
        up.proc.kill()
    assert len(answered) >= 300
    return answered, tmp_path / "gw" / "audit.jsonl", gw


async def test_sigkill_loses_no_answered_call_and_records_none_twice(tmp_path: Path) -> None:
    answered, audit, killed = await _kill_under_load(tmp_path, journal=True)
    assert set(answered.values()) <= {200, 401, 429}  # (429: the wrong key's strikes may block the client IP)
    assert 401 in answered.values() and 200 in answered.values()
    assert _records(audit) == []  # the writer was held: every record was still in memory at the kill
    # the next process on the same paths records what the killed one had answered
    up = start_upstream(tmp_path)
    gw = start_gateway(
        tmp_path / "gw", default_policies(up.url), keys=KEYS, config={"audit": {**HELD_WRITER, "journal": True}}
    )
    try:
        assert gw.stop() == 0  # SIGTERM: the drain writes the recovered records
    finally:
        up.proc.kill()
    records = _records(audit)
    counts = Counter(r["request_id"] for r in records)
    missing = [rid for rid in answered if counts[rid] == 0]
    twice = [rid for rid in answered if counts[rid] > 1]
    assert missing == [] and twice == []
    for rec in records:
        if rec["request_id"] in answered:
            assert rec["notes"] == {"recovered": "journal"}
            assert rec["http_status"] == answered[rec["request_id"]]
            assert rec["decision"] == ("allowed" if rec["http_status"] == 200 else "refused")
            if rec["http_status"] == 200:
                assert rec["tenant"] == "acme" and rec["principal"] is not None and rec["upstream_status"] == 200
    verify = await asyncio.to_thread(
        subprocess.run,
        [PYTHON, "-m", "gateway", "audit", "verify", "--file", str(audit)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # nothing is left to recover twice: the journal directory holds no file of a dead process
    jdir = tmp_path / "gw" / "spool.jsonl-journal"
    assert not any(jdir.iterdir())
    del killed


async def test_without_the_journal_the_same_kill_loses_answered_calls(tmp_path: Path) -> None:
    # the control: the test above would fail if the journal did nothing
    answered, audit, _ = await _kill_under_load(tmp_path, journal=False)
    up = start_upstream(tmp_path)
    gw = start_gateway(tmp_path / "gw", default_policies(up.url), keys=KEYS, config={"audit": {"journal": False}})
    try:
        assert gw.stop() == 0
    finally:
        up.proc.kill()
    counts = Counter(r["request_id"] for r in _records(audit))
    assert sum(1 for rid in answered if counts[rid] == 0) == len(answered)
