"""Shared fixtures. Services are real; when CI=true an unreachable service fails the test, never skips it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.admin.problem import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX
from gateway.app import build_app
from gateway.testing import inprocess_settings, policy_documents
from tests.harness import (
    CI,
    HMAC_SECRET,
    PostgresInstance,
    RedisInstance,
    api_key,
    port_open,
    start_postgres,
    start_redis,
)

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


# documents (gateway/testing.py policy_documents), keys (key id -> key fields), config -> a client of that gateway
GatewayClientFactory = Callable[..., Awaitable[tuple[TestClient[Any, Any], dict[str, str]]]]


@pytest.fixture
async def gateway_client(tmp_path: Path, aiohttp_client: Any) -> GatewayClientFactory:
    """The middle layer between unit and subprocess e2e tests: `build_app` on a temporary policy directory, served by
    aiohttp's test server in the test's own event loop (aiohttp's server only: the lean server, workers and
    signals are the subprocess tests' business). Returns the client and the full API keys by key id."""
    made = 0

    async def make(
        documents: Mapping[str, Any] | None = None,
        *,
        keys: Mapping[str, Mapping[str, Any]] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> tuple[TestClient[Any, Any], dict[str, str]]:
        nonlocal made
        made += 1
        docs = dict(documents if documents is not None else policy_documents())
        raw: dict[str, str] = {}
        entries = list(docs.get("keys", {}).get("keys", []))
        for key_id, fields in (keys or {}).items():
            raw[key_id], digest = api_key(key_id)
            entries.append({"id": key_id, "hash": digest, **fields})
        docs["keys"] = {"keys": entries}
        settings = inprocess_settings(tmp_path / f"gateway-{made}", docs, HMAC_SECRET, config)
        client: TestClient[Any, Any] = await aiohttp_client(build_app(settings))
        return client, raw

    return make


def problem_reason(content_type: str, status: int, body: Any) -> str:
    """The reason of an admin API refusal, after checking that it is RFC 9457 problem details of that status."""
    assert content_type == PROBLEM_CONTENT_TYPE, content_type
    assert isinstance(body, dict) and "jsonrpc" not in body, body
    assert body["status"] == status and body["type"] == PROBLEM_TYPE_PREFIX + body["reason"], body
    assert isinstance(body["title"], str) and isinstance(body["detail"], str), body
    return str(body["reason"])
