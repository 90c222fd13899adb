"""API key pieces: format, hashing, compiled records (IP allowlists v4/v6, expiry), tool matchers, usage counters,
and the CLI's keys.yaml editing (append keeps comments, revoke, rollback on an invalid result)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from gateway.auth import cli, keysfile
from gateway.auth.apikeys import generate_key, hash_key, parse_key, verify_key
from gateway.auth.keyrecord import from_policy, parse_ip
from gateway.auth.tools import ToolMatcher, ToolPolicy
from gateway.auth.usage import UsageCounters, UsageFlusher
from gateway.cli_errors import CliError
from gateway.policy.keys import ApiKeyPolicy

pytestmark = pytest.mark.unit


def test_key_format_and_hash() -> None:
    kid, raw = generate_key()
    parsed = parse_key(raw)
    assert parsed is not None and parsed.key_id == kid
    digest = hash_key(b"s", raw)
    assert verify_key(b"s", raw, digest)
    assert not verify_key(b"other", raw, digest)
    assert not verify_key(b"s", raw + "x", digest)
    for bad in ("mgw_", "mgw_id", "mgw_id_short", "xyz_abc_0123456789abcdef", "mgw_i-d_0123456789abcdef", "mgw_" * 80):
        assert parse_key(bad) is None, bad


def key(**kw: object) -> ApiKeyPolicy:
    return ApiKeyPolicy.model_validate({"id": "k1", "hash": "0" * 64, "tenant": "acme", **kw})


@pytest.mark.parametrize(
    ("cidrs", "ip", "ok"),
    [
        ([], "203.0.113.9", True),
        (["10.0.0.0/8"], "10.1.2.3", True),
        (["10.0.0.0/8"], "11.1.2.3", False),
        (["10.0.0.0/8"], "::ffff:10.1.2.3", True),  # IPv4-mapped IPv6 is the IPv4 client
        (["192.168.1.7"], "192.168.1.7", True),
        (["192.168.1.7"], "192.168.1.8", False),
        (["2001:db8::/32"], "2001:db8:1::5", True),
        (["2001:db8::/32"], "2001:db9::5", False),
        (["2001:db8::/32"], "10.1.2.3", False),
        (["10.0.0.0/8"], "not-an-ip", False),
    ],
)
def test_ip_allowlist(cidrs: list[str], ip: str, ok: bool) -> None:
    assert from_policy(key(allow_ips=cidrs)).ip_allowed(ip) is ok


def test_expiry_naive_means_utc_and_revocation() -> None:
    naive = datetime(2030, 1, 1, 12, 0, 0)
    rec = from_policy(key(expires_at=naive, revoked=True))
    assert rec.expires_at == datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert rec.revoked
    assert parse_ip("::ffff:1.2.3.4") == parse_ip("1.2.3.4")


def test_tool_matchers() -> None:
    m = ToolMatcher(["read_*", "echo"], ["read_secret*"], source="t")
    assert m.allows("read_file") and m.allows("echo")
    assert not m.allows("read_secrets") and not m.allows("write_file")
    assert ToolMatcher([], []).allows("anything") and ToolMatcher([], []).empty
    policy = ToolPolicy((ToolMatcher([], ["rm"], source="tenant"), ToolMatcher([], ["ls"], shadow=True, source="s")))
    v = policy.verdict("rm")
    assert (v.allowed, v.denied_by) == (False, "tenant")
    v = policy.verdict("ls")
    assert (v.allowed, v.shadow_denied_by) == (True, ("s",))
    assert policy.verdict("cat").allowed
    assert not policy.verdict("cat", ToolMatcher([], ["cat"], source="key")).allowed
    assert policy.filters_lists


def test_usage_counters_and_flusher() -> None:
    counters = UsageCounters()
    for _ in range(3):
        counters.hit("a")
    counters.hit("b")
    written: list[list[tuple[str, int, datetime]]] = []
    fail = True

    async def writer(batch: object) -> None:
        if fail:
            raise ConnectionError("down")
        written.append(list(batch))  # type: ignore[call-overload]

    flusher = UsageFlusher(counters, 60, writer)
    asyncio.run(flusher.flush())  # fails: the counts go back
    assert counters.totals()["a"][0] == 3
    fail = False
    counters.hit("a")
    asyncio.run(flusher.flush())
    assert sorted((k, n) for k, n, _ in written[0]) == [("a", 4), ("b", 1)]
    assert counters.totals()["a"][0] == 4
    asyncio.run(flusher.flush())
    assert len(written) == 1  # nothing new, nothing written


def test_parse_expiry() -> None:
    now = datetime.now(UTC)
    d = cli.parse_expiry("30d")
    assert d is not None and timedelta(days=29, hours=23) < d - now <= timedelta(days=30, seconds=1)
    assert cli.parse_expiry("2030-01-01T00:00:00Z") == datetime(2030, 1, 1, tzinfo=UTC)
    assert cli.parse_expiry("2030-01-01T00:00:00") == datetime(2030, 1, 1, tzinfo=UTC)
    assert cli.parse_expiry(None) is None
    assert cli.parse_expiry("2030-01-31") == datetime(2030, 1, 31, tzinfo=UTC)
    with pytest.raises(ValueError, match="'tomorrow' is not a time: give an ISO 8601 time"):
        cli.parse_expiry("tomorrow")


def _policy_dir(tmp_path: Path, keys_text: str) -> Path:
    (tmp_path / "tenants.yaml").write_text("tenants:\n  acme: {}\n")
    (tmp_path / "keys.yaml").write_text(keys_text)
    return tmp_path / "keys.yaml"


def test_append_keeps_comments_and_revoke(tmp_path: Path) -> None:
    path = _policy_dir(
        tmp_path,
        "# my keys\nkeys:\n  # the first one\n  - id: one\n    hash: '" + "1" * 64 + "'\n    tenant: acme\n",
    )
    keysfile.append_policy_key(path, {"id": "two", "hash": "2" * 64, "tenant": "acme", "scopes": ["read"]})
    text = path.read_text()
    assert "# my keys" in text and "# the first one" in text
    data = yaml.safe_load(text)
    assert [k["id"] for k in data["keys"]] == ["one", "two"]
    keysfile.revoke_policy_key(path, "one")
    keysfile.revoke_policy_key(path, "one")  # idempotent
    data = yaml.safe_load(path.read_text())
    assert data["keys"][0]["revoked"] is True and "revoked" not in data["keys"][1]
    assert path.read_text().count("revoked") == 1
    with pytest.raises(CliError):
        keysfile.append_policy_key(path, {"id": "two", "hash": "3" * 64, "tenant": "acme"})


def test_append_to_empty_list_and_rollback(tmp_path: Path) -> None:
    path = _policy_dir(tmp_path, "# none yet\nkeys: []\n")
    keysfile.append_policy_key(path, {"id": "a1", "hash": "a" * 64, "tenant": "acme"})
    assert yaml.safe_load(path.read_text())["keys"][0]["id"] == "a1"
    assert path.read_text().startswith("# none yet")
    before = path.read_text()
    with pytest.raises(CliError):
        keysfile.append_policy_key(path, {"id": "b1", "hash": "b" * 64, "tenant": "nosuch"})  # unknown tenant
    assert path.read_text() == before
    with pytest.raises(CliError):
        keysfile.revoke_policy_key(path, "nosuch")
