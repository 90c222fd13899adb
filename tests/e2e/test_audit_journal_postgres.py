"""SIGKILL under load with the PostgreSQL sink (issue 15, items 4 and 7): every answered call has exactly one row.

The file-sink variant is tests/e2e/test_audit_journal.py. Here the gateway writes to a database of the test's own;
its writer sends full batches only (a long flush interval), so at the kill some records are in PostgreSQL and the
rest only in memory. With PostgreSQL down at the kill (a private cluster, stopped mid-load), records are in the
spool (fsynced), in memory, or both kinds; the killed process's spool lock stays on disk. The next process on the
same audit paths must take over the lock, replay the spool and recover the journal: no answered call without a
row, no request id twice, and the hash chains verify.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.e2e.test_audit_journal import KEYS, _load
from tests.harness import Gateway, PostgresInstance, default_policies, metric_sample, start_gateway, start_upstream
from tests.integration.test_db_migrations import cli, temp_database

pytestmark = pytest.mark.e2e


def config(dsn: str, **audit: Any) -> dict[str, Any]:
    return {
        "postgres": {"dsn": dsn},
        "audit": {"sink": "postgres", "log_records": False, "reconnect_interval": 0.2, **audit},
        # the load is `initialize`s of one key: the per-key session cap is not what is tested here
        "http": {"max_sessions_per_key": 100000},
    }


def policies(upstream_url: str) -> dict[str, Any]:
    pol = default_policies(upstream_url)
    pol["limits.yaml"] = {"costs": {"initialize": 0}}
    return pol


async def rows(dsn: str) -> list[tuple[str, dict[str, Any] | None]]:
    conn = await asyncpg.connect(dsn)
    try:
        got = await conn.fetch("SELECT request_id, notes FROM audit_records WHERE server = 'example'")
    finally:
        await conn.close()
    out: list[tuple[str, dict[str, Any] | None]] = []
    for r in got:
        notes = r["notes"]
        out.append((r["request_id"], orjson.loads(notes) if isinstance(notes, str | bytes) else notes))
    return out


async def metric(gw: Gateway, name: str) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        return metric_sample((await client.get(f"{gw.base}/metrics")).text, name)


async def until(check: Any, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.05)


def check_every_answer_once(answered: dict[str, int], found: list[tuple[str, dict[str, Any] | None]]) -> None:
    counts = Counter(rid for rid, _ in found)
    missing = [rid for rid in answered if counts[rid] == 0]
    twice = [rid for rid in answered if counts[rid] > 1]
    assert (len(missing), len(twice)) == (0, 0), (missing[:5], twice[:5])
    assert 200 in answered.values()
    assert any(notes == {"recovered": "journal"} for _, notes in found)  # the journal was needed


async def restart_and_stop(tmp_path: Path, dsn: str, **audit: Any) -> None:
    """The next process on the same audit paths: it recovers at start; SIGTERM then drains what it recovered."""
    up = start_upstream(tmp_path)
    gw = start_gateway(tmp_path / "gw", policies(up.url), keys=KEYS, config=config(dsn, **audit))
    try:
        assert gw.stop() == 0
    finally:
        up.proc.kill()
    assert "audit writer did not finish" not in gw.logs()


async def test_sigkill_with_the_postgres_sink_loses_no_answered_call(postgres_dsn: str, tmp_path: Path) -> None:
    async with temp_database(postgres_dsn) as dsn:
        up = start_upstream(tmp_path, json_response=True)
        held = {"batch_size": 100, "flush_interval": 60}  # full batches reach PostgreSQL, a partial one waits
        gw = start_gateway(tmp_path / "gw", policies(up.url), keys=KEYS, config=config(dsn, **held))
        answered: dict[str, int] = {}
        stop = asyncio.Event()
        load = asyncio.create_task(_load(gw, answered, stop))
        try:

            async def some_in_postgres_some_not() -> bool:
                # at least two batches in PostgreSQL, and a good part of the next one only in memory
                stored = len(await rows(dsn))
                return stored >= 200 and len(answered) >= stored + 30

            await until(some_in_postgres_some_not)
            gw.proc.kill()  # SIGKILL mid-load
            stop.set()
            await asyncio.wait_for(load, 30)
        finally:
            stop.set()
            gw.proc.kill()
            up.proc.kill()
        stored = {rid for rid, _ in await rows(dsn)}
        assert stored and any(rid not in stored for rid in answered)  # the kill left answered calls unrecorded
        await restart_and_stop(tmp_path, dsn, **held)
        check_every_answer_once(answered, await rows(dsn))
        out = cli("audit", "verify", "--dsn", dsn)
        assert out.returncode == 0, out.stdout + out.stderr


async def test_sigkill_with_postgres_down_the_next_start_takes_over_spool_and_lock(
    private_postgres: PostgresInstance, tmp_path: Path
) -> None:
    async with temp_database(private_postgres.dsn) as dsn:
        up = start_upstream(tmp_path, json_response=True)
        gw = start_gateway(tmp_path / "gw", policies(up.url), keys=KEYS, config=config(dsn, batch_size=50))
        answered: dict[str, int] = {}
        stop = asyncio.Event()
        load = asyncio.create_task(_load(gw, answered, stop))
        try:

            async def under_load() -> bool:
                return len(answered) >= 150

            await until(under_load)
            await asyncio.to_thread(private_postgres.stop)
            spooled_at = len(answered)

            async def spooling() -> bool:
                return await metric(gw, "mcp_gateway_audit_records_spooled_total") >= 50 and (
                    len(answered) >= spooled_at + 150
                )

            await until(spooling)
            gw.proc.kill()  # SIGKILL mid-load, PostgreSQL down: records in the spool and in memory
            stop.set()
            await asyncio.wait_for(load, 30)
        finally:
            stop.set()
            gw.proc.kill()
            up.proc.kill()
        spool_dir = tmp_path / "gw"
        dead_locks = sorted(spool_dir.glob("spool.jsonl.*.lock"))
        assert len(dead_locks) == 1  # the killed gateway's lock stays behind
        dead = dead_locks[0].name.removesuffix(".lock")
        assert (spool_dir / dead).stat().st_size > 0  # and its spool holds records
        await asyncio.to_thread(private_postgres.start)
        await restart_and_stop(tmp_path, dsn, batch_size=50)
        # the dead process's lock and spool are gone (taken over and replayed), nothing else of it is left
        assert not (spool_dir / f"{dead}.lock").exists() and not (spool_dir / dead).exists()
        assert not [p.name for p in spool_dir.glob("spool.jsonl.*")], list(spool_dir.iterdir())
        assert not any((spool_dir / "spool.jsonl-journal").iterdir())
        found = await rows(dsn)
        check_every_answer_once(answered, found)
        assert len(found) > 300
        out = cli("audit", "verify", "--dsn", dsn)
        assert out.returncode == 0, out.stdout + out.stderr
