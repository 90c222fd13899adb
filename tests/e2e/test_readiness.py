"""/readyz: a backend the gateway degrades without (Redis) makes it `degraded`, not unready."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.harness import RedisInstance, default_policies, running, start_gateway, start_upstream

pytestmark = pytest.mark.e2e


async def test_redis_down_is_degraded_not_unready(tmp_path: Path, private_redis: RedisInstance) -> None:
    up = start_upstream(tmp_path)
    gw = start_gateway(
        tmp_path / "gw",
        default_policies(up.url, health={"enabled": False}),
        config={"redis": {"url": private_redis.url, "key_prefix": "readyz:"}},
    )
    with running(gw, up):
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.get(f"{gw.base}/readyz")
            assert r.status_code == 200
            assert r.json()["status"] == "ready" and r.json()["checks"]["redis"] == "ok"
            private_redis.stop()
            deadline = time.monotonic() + 10
            while True:
                r = await c.get(f"{gw.base}/readyz")
                if r.json()["checks"].get("redis") != "ok" or time.monotonic() > deadline:
                    break
            body = r.json()
            assert r.status_code == 200, body
            assert body["status"] == "degraded"
            assert body["checks"]["redis"].startswith("redis:")
