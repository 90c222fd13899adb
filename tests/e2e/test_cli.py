"""The `mcp-gateway` command as ops run it: `check` (offline validation), `schema`, and `run` refusing bad input."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.harness import PYTHON, ROOT, free_port, port_open

pytestmark = pytest.mark.e2e

FIXTURES = ROOT / "tests" / "fixtures" / "policies"
EXE = str(Path(PYTHON).parent / "mcp-gateway")


def cli(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def broken_copy(tmp_path: Path, case: str) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(FIXTURES / "good", target)
    for f in (FIXTURES / "broken" / case).iterdir():
        shutil.copy(f, target / f.name)
    return target


def test_check_good_directory_exits_0() -> None:
    r = cli("check", str(FIXTURES / "good"))
    assert r.returncode == 0, r.stderr
    assert "ok (version" in r.stdout and "2 servers, 2 tenants, 2 keys" in r.stdout


def test_check_without_directory_uses_config_yaml() -> None:
    r = cli("check")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(str(ROOT / "policies")) and "ok (version" in r.stdout


def test_check_broken_directory_names_file_path_reason(tmp_path: Path) -> None:
    # several files broken at once: every problem is reported in one run, each naming file, path and reason
    directory = broken_copy(tmp_path, "unknown_key")
    for case in ("wrong_type", "bad_scope", "unknown_file"):
        for f in (FIXTURES / "broken" / case).iterdir():
            shutil.copy(f, directory / f.name)
    r = cli("check", str(directory))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [
        "error: server.yaml: unknown policy file (expected one of servers.yaml, tenants.yaml, keys.yaml, "
        "limits.yaml, access.yaml)",
        "error: servers.yaml: servers.example.timeouts.conect: Extra inputs are not permitted",
        "error: tenants.yaml: tenants.acme.weight: Input should be a valid number, unable to parse string as a number",
        "error: keys.yaml: keys[0].scopes[1]: Input should be 'read', 'write' or 'admin'",
        f"{directory}: 4 problem(s)",
    ]


@pytest.mark.parametrize(
    ("case", "line"),
    [
        ("unknown_tenant", "error: keys.yaml: keys[0].tenant: unknown tenant 'initech'"),
        ("bad_yaml", "error: servers.yaml: line 5, column 6: invalid YAML: expected <block end>"),
    ],
)
def test_check_reports_cross_reference_and_yaml_problems(tmp_path: Path, case: str, line: str) -> None:
    r = cli("check", str(broken_copy(tmp_path, case)))
    assert r.returncode == 1
    assert r.stderr.splitlines()[0].startswith(line), r.stderr


def test_check_missing_directory(tmp_path: Path) -> None:
    r = cli("check", str(tmp_path / "absent"))
    assert r.returncode == 1 and "policy directory does not exist" in r.stderr


def test_check_with_broken_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("listen: {port: many}\n")
    r = cli("check", "--config", str(cfg))
    assert r.returncode == 2 and f"{cfg}: listen.port" in r.stderr


def test_schema_command(tmp_path: Path) -> None:
    w = cli("schema", "--write", str(tmp_path))
    assert w.returncode == 0 and len(w.stdout.split()) == 5
    assert '"title": "MCP gateway policy: keys.yaml"' in (tmp_path / "keys.schema.json").read_text()
    (tmp_path / "keys.schema.json").write_text("{}\n")
    stale = cli("schema", "--check", str(tmp_path))
    assert stale.returncode == 1 and stale.stderr.strip() == f"stale: {tmp_path / 'keys.schema.json'}"


def test_run_refuses_a_broken_policy_with_a_clear_message(tmp_path: Path) -> None:
    directory = broken_copy(tmp_path, "unknown_tenant")
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": port},
                "policies_dir": str(directory),
                "audit": {"sink": "file", "path": str(tmp_path / "audit.jsonl")},
                "api_keys": {"hmac_secret": {"file": str(ROOT / "dev" / "apikey-secret")}},
            }
        )
    )
    r = cli("run", "--config", str(cfg))
    assert r.returncode == 1
    assert "error: keys.yaml: keys[0].tenant: unknown tenant 'initech'" in r.stderr
    assert "Traceback" not in r.stderr and "Unclosed" not in r.stderr
    assert not port_open(port)


def test_run_with_missing_config_exits_2(tmp_path: Path) -> None:
    r = cli("run", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_run_refuses_several_workers_without_redis(tmp_path: Path) -> None:
    """Several workers keep sessions and limits in Redis; without it `run` refuses instead of misbehaving."""
    pol = tmp_path / "policies"
    pol.mkdir()
    (pol / "servers.yaml").write_text("servers: {}\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"listen: {{port: 18099}}\nworkers: 2\npolicies_dir: {pol}\nredis: {{url: null}}\n")
    out = subprocess.run(
        [PYTHON, "-m", "gateway", "run", "--config", str(cfg)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert "workers > 1 needs redis.url" in out.stderr + out.stdout


def test_check_refuses_an_empty_servers_yaml_unless_allowed(tmp_path: Path) -> None:
    pol = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", pol, ignore=shutil.ignore_patterns("schema"))
    (pol / "servers.yaml").write_text("servers: {}\n")
    (pol / "access.yaml").write_text("rules: []\n")
    (pol / "tenants.yaml").write_text("tenants: {demo: {}}\n")
    r = cli("check", str(pol))
    assert r.returncode == 1
    assert "error: servers.yaml: servers: no server is defined, so every route would be removed" in r.stderr
    (pol / "servers.yaml").write_text("servers: {}\nallow_empty: true\n")
    r = cli("check", str(pol))
    assert r.returncode == 0, r.stderr


def test_version() -> None:
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("mcp-gateway ") and r.stdout.split()[1][0].isdigit()


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("redis: {url: 'redis//127.0.0.1:6379'}", "error: redis.url (MGW_REDIS_URL) is not a Redis URL"),
        ("api_keys: {hmac_secret: {file: missing-secret}}", "error: api_keys.hmac_secret: cannot read secret file"),
        ("PORT-IN-USE", "is already in use"),
    ],
)
def test_run_refuses_a_broken_setting_in_one_line(tmp_path: Path, setting: str, expected: str) -> None:
    """Start-up problems name the setting and the fix and exit 2: no traceback, nothing left listening."""
    import socket

    port = free_port()
    holder = socket.socket()
    if setting == "PORT-IN-USE":
        holder.bind(("127.0.0.1", port))
        holder.listen()
        setting = ""
    try:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(
            f"listen: {{host: 127.0.0.1, port: {port}}}\npolicies_dir: {ROOT / 'policies'}\n"
            f"audit: {{sink: file, path: {tmp_path / 'a.jsonl'}}}\n{setting}\n"
        )
        r = cli("run", "--config", str(cfg))
        assert r.returncode == 2, r.stderr
        assert expected in r.stderr
        assert "Traceback" not in r.stderr + r.stdout
        assert r.stderr.strip().splitlines()[-1] == "error: the gateway did not start"
    finally:
        holder.close()
    assert not port_open(port)
