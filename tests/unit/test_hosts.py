"""Host / Origin policy (gateway/hosts.py): defaults, loopback equivalence, explicit entries, settings validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import Forbidden, MisdirectedRequest
from gateway.hosts import HostPolicy, parse_host_entry, parse_origin_entry, refusal_notes, split_authority
from gateway.settings import Settings, SettingsError, load_settings

pytestmark = pytest.mark.unit


def policy(public_url: str = "http://127.0.0.1:8080", ports: tuple[int, ...] = (8080,), **kw: list[str]) -> HostPolicy:
    return HostPolicy.build(public_url, ports, kw.get("hosts", []), kw.get("origins", []))


def test_default_hosts_are_the_public_authority_and_loopback_names_with_the_port() -> None:
    p = policy("https://mcp.example.com")
    for ok in ("mcp.example.com", "MCP.Example.COM", "mcp.example.com:443", "localhost:8080", "127.0.0.1:8080"):
        assert p.host_allowed(ok), ok
    assert p.host_allowed("[::1]:8080")
    for bad in (
        "attacker.example",
        "attacker.example:8080",
        "localhost:9999",
        "mcp.example.com:8080",
        "mcp.example.com.attacker.example",
        "10.0.0.5:8080",
        "",
    ):
        assert not p.host_allowed(bad), bad


def test_loopback_names_are_equivalent_origins() -> None:
    p = policy("http://127.0.0.1:8080")
    for ok in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "HTTP://LOCALHOST:8080"):
        assert p.origin_allowed(ok), ok
    for bad in ("http://localhost:8081", "https://localhost:8080", "http://evil.example", "null", "http://localhost"):
        assert not p.origin_allowed(bad), bad


def test_public_origin_leaves_the_default_port_out() -> None:
    p = policy("https://mcp.example.com:443/")
    assert p.origin_allowed("https://mcp.example.com")
    assert not p.origin_allowed("http://mcp.example.com")
    assert policy("http://gw.example:8443").origin_allowed("http://gw.example:8443")


def test_explicit_host_entries() -> None:
    p = policy(hosts=["gateway-a", "api.example.com:8443", "scrape.internal:*", "10.0.0.0/8", "fd00::/8"])
    assert p.host_allowed("gateway-a") and not p.host_allowed("gateway-a:8080")
    assert p.host_allowed("api.example.com:8443") and not p.host_allowed("api.example.com")
    assert p.host_allowed("scrape.internal:9090") and p.host_allowed("scrape.internal")
    assert p.host_allowed("10.1.2.3:8080") and p.host_allowed("10.1.2.3")
    assert p.host_allowed("[fd00::1]:8080")
    # a name that starts like an allowed network is a name, not an address
    assert not p.host_allowed("10.1.2.3.attacker.example:8080")
    assert not p.host_allowed("11.0.0.1:8080")
    assert policy(hosts=["*"]).host_allowed("anything.example:1")


def test_explicit_origin_entries() -> None:
    p = policy(origins=["https://app.example.com/", "http://dev.example:*", "https://x.example:443"])
    assert p.origin_allowed("https://app.example.com")
    assert p.origin_allowed("http://dev.example:3000")
    assert p.origin_allowed("https://x.example")
    assert not p.origin_allowed("https://dev.example:3000")
    assert policy(origins=["*"]).origin_allowed("https://anything.example")


def test_port_zero_lets_loopback_names_in_on_any_port() -> None:
    p = policy(ports=(0,))
    assert p.host_allowed("localhost:43123") and p.origin_allowed("http://127.0.0.1:43123")
    assert not p.host_allowed("attacker.example:43123")


def test_refusal_is_421_for_host_and_403_for_origin_and_none_without_headers() -> None:
    p = policy()
    assert p.refusal({}) is None
    assert p.refusal({"Host": "127.0.0.1:8080"}) is None
    host = p.refusal({"Host": "attacker.example:8080", "Origin": "http://attacker.example:8080"})
    assert isinstance(host, MisdirectedRequest) and (host.status, host.code, host.reason) == (421, -31403, "bad_host")
    origin = p.refusal({"Host": "localhost:8080", "Origin": "https://evil.example"})
    assert isinstance(origin, Forbidden) and (origin.status, origin.reason) == (403, "bad_origin")
    assert p.refusal({"Host": "localhost:8080", "Origin": "https://evil.example"}, check_origin=False) is None
    unchecked = p.refusal({"Host": "attacker.example", "Origin": "https://evil.example"}, check_origin=False)
    assert isinstance(unchecked, MisdirectedRequest)
    long_host = "a" * 5000
    assert refusal_notes(host, {"Host": long_host}) == {"host": "a" * 256}
    assert refusal_notes(origin, {"Origin": "https://evil.example"}) == {"origin": "https://evil.example"}


@pytest.mark.parametrize("entry", ["http://x.example", "a b", "", "x:99999", "x:port", "user@x", "300.0.0.0/8"])
def test_bad_host_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed_hosts"):
        parse_host_entry(entry)


@pytest.mark.parametrize("entry", ["x.example", "ftp://x.example", "https://x.example/path", "http://x:0"])
def test_bad_origin_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed_origins"):
        parse_origin_entry(entry)


def test_split_authority() -> None:
    assert split_authority("[::1]:8080") == ("[::1]", "8080")
    assert split_authority("[::1]") == ("[::1]", None)
    assert split_authority("a.example:1") == ("a.example", "1")
    assert split_authority("a.example") == ("a.example", None)


def test_settings_admin_listener_adds_its_port_and_address() -> None:
    s = Settings.model_validate({"listen": {"port": 8080}, "admin_listen": {"host": "10.0.0.5", "port": 9090}})
    p = HostPolicy.from_settings(s)
    assert p.host_allowed("127.0.0.1:9090") and p.host_allowed("10.0.0.5:9090") and p.host_allowed("localhost:8080")
    assert not p.host_allowed("10.0.0.5:8080")


def test_env_overrides_take_comma_separated_lists(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("listen: {port: 8080}\n")
    env = {
        "MGW_ALLOWED_HOSTS": "gateway-a, 10.0.0.0/8",
        "MGW_ALLOWED_ORIGINS": "https://app.example",
        "MGW_ADMIN_PORT": "9090",
    }
    s = load_settings(cfg, env=env)
    assert s.http.allowed_hosts == ["gateway-a", "10.0.0.0/8"]
    assert s.http.allowed_origins == ["https://app.example"]
    assert (s.admin_listen.host, s.admin_listen.port) == ("127.0.0.1", 9090)


def test_settings_refuse_bad_entries_and_one_port_for_both_listeners(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("http: {allowed_hosts: ['http://x.example']}\n")
    with pytest.raises(SettingsError, match=r"http\.allowed_hosts"):
        load_settings(cfg, env={})
    cfg.write_text("listen: {port: 8080}\nadmin_listen: {port: 8080}\n")
    with pytest.raises(SettingsError, match=r"admin_listen\.port must differ"):
        load_settings(cfg, env={})
    assert Settings().admin_listen.port is None  # off by default
