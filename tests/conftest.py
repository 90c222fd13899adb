"""Shared fixtures. Services are real; when CI=true an unreachable service fails the test, never skips it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.harness import CI, PostgresInstance, RedisInstance, port_open, start_postgres, start_redis

SHARED_REDIS_URL = os.environ.get("MGW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SHARED_PG_DSN = os.environ.get("MGW_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _require(service: str, port: int) -> None:
    if port_open(port):
        return
    msg = f"{service} is not reachable on 127.0.0.1:{port} (run `make services`)"
    if CI:
        pytest.fail(msg)
    pytest.skip(msg)  # local runs without services; CI fails instead (see above)


@pytest.fixture
def redis_url() -> str:
    """The machine's shared Redis; tests must use their own key prefix and never FLUSHALL."""
    _require("Redis", 6379)
    return SHARED_REDIS_URL


@pytest.fixture
def postgres_dsn() -> str:
    """The machine's shared PostgreSQL; tests create their own database or schema."""
    _require("PostgreSQL", 5432)
    return SHARED_PG_DSN


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisInstance]:
    """A Redis of the test's own (for killing and restarting)."""
    inst = start_redis(tmp_path)
    try:
        yield inst
    finally:
        inst.stop()


@pytest.fixture
def private_postgres() -> Iterator[PostgresInstance]:
    """A PostgreSQL cluster of the test's own (initdb + pg_ctl on a temp dir; for stopping and starting)."""
    inst = start_postgres()
    try:
        yield inst
    finally:
        inst.destroy()


@pytest.fixture
async def _noop() -> AsyncIterator[None]:  # keeps pytest-asyncio's async fixture machinery loaded
    yield
