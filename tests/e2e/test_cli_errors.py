"""Every `mcp-gateway` command the README and docs/ show, run with bad input: no traceback, one `error:` line on
stderr naming what to fix, and the exit code docs/operations.md ("Exit codes") gives its class. The documented
commands are read from the docs, so a command documented later without a case here fails
`test_every_documented_command_has_bad_input_cases`."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest
import yaml

from gateway.cli import build_parser
from gateway.db.scratch import with_db
from tests import forked_cli
from tests.conftest import SHARED_PG_DSN, _require
from tests.harness import PYTHON, ROOT, free_port

pytestmark = pytest.mark.e2e

EXE = str(Path(PYTHON).parent / "mcp-gateway")
FIXTURES = ROOT / "tests" / "fixtures" / "policies"
SECRET = "s" * 40
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/mgw"  # nothing listens on port 1: refused at once
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _subcommands() -> dict[str, set[str]]:
    """Top-level command -> its subcommands (empty for a leaf), from the real parser."""
    out: dict[str, set[str]] = {}

    def choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    for name, sub in choices(build_parser()).items():
        out[name] = set(choices(sub))
    return out


def documented_commands() -> set[str]:
    """`run`, `keys create`, ... for every `mcp-gateway ...` command line in README.md and docs/*.md."""
    tree = _subcommands()
    found: set[str] = set()
    for doc in DOCS:
        for m in re.finditer(r"mcp-gateway ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", doc.read_text()):
            top, sub = m.group(1), m.group(2)
            if top not in tree:
                continue  # prose ("mcp-gateway is ..."), image names
            if tree[top]:
                if sub in tree[top]:
                    found.add(f"{top} {sub}")
            else:
                found.add(top)
    return found


@dataclass
class Case:
    argv: list[str]
    code: int
    says: str  # a fragment of the one line
    env: dict[str, str] = field(default_factory=dict)
    lines: int = 1  # `check` states the problem count after the problems
    cwd: str = "root"  # "root" (config.yaml of the repository) or "empty" (no config.yaml)


@dataclass
class World:
    tmp: Path
    policies: Path  # a copy of tests/fixtures/policies/good (tenants acme and globex)
    flow_policies: Path  # the same with keys.yaml in inline style
    migrated: str  # DSN of a migrated scratch database
    bare: str  # DSN of a scratch database without the schema
    empty_config: Path
    bad_config: Path
    broken_run_config: Path


# command -> bad input cases; {placeholders} are filled from World
CASES: dict[str, list[Case]] = {
    "run": [
        Case(["run", "--port", "abc"], 2, "argument --port: 'abc' is not a port number"),
        Case(["run", "--port", "70000"], 2, "70000 is not a port (0-65535)"),
        Case(["run", "--config", "{tmp}/nope.yaml"], 2, "nope.yaml: cannot read"),
        Case(["run", "--bogus"], 2, "unrecognized arguments: --bogus"),
        Case(["run", "--config", "{bad_config}"], 2, "listen.port: Input should be"),
    ],
    "check": [
        Case(["check", "--config", "{bad_config}"], 2, "listen.port: Input should be"),
        Case(["check", "{tmp}/absent"], 1, "policy directory does not exist", lines=2),
        Case(["check"], 2, "listen.port (from environment variable MGW_PORT)", env={"MGW_PORT": "eighty"}),
        Case(["check"], 2, "set by both MGW_LISTEN__PORT and MGW_PORT", env={"MGW_PORT": "1", "MGW_LISTEN__PORT": "2"}),
    ],
    "explain": [
        Case(["explain", "--tool", "add"], 2, "the following arguments are required: --server"),
        Case(
            ["explain", "--server", "example", "--tool", "add", "--jwt-claims", "{{no"], 2, "--jwt-claims is not valid"
        ),
        Case(["explain", "--server", "example", "--method", "tools/call"], 2, "tools/call needs --tool"),
    ],
    "keys create": [
        Case(
            ["keys", "create", "--tenant", "acme", "--expires", "tomorrow", "--policies", "{policies}"],
            2,
            "'tomorrow' is not a time",
        ),
        Case(
            ["keys", "create", "--tenant", "acme", "--expires", "2001-01-01", "--policies", "{policies}"],
            2,
            "is in the past",
        ),
        Case(
            ["keys", "create", "--tenant", "acme", "--scopes", "read,root", "--policies", "{policies}"],
            2,
            "--scopes: Input should be 'read', 'write' or 'admin'",
        ),
        Case(
            ["keys", "create", "--tenant", "acme", "--allow-ip", "10.0.0.0/33", "--policies", "{policies}"],
            2,
            "--allow-ip",
        ),
        Case(
            ["keys", "create", "--tenant", "acme", "--id", "bad-id!", "--policies", "{policies}"],
            2,
            "--id: key id must be",
        ),
        Case(
            ["keys", "create", "--tenant", "acme", "--policies", "{policies}", "--config", "{empty_config}"],
            2,
            "environment variable MGW_APIKEY_SECRET is not set",
            env={"MGW_APIKEY_SECRET": ""},
        ),
        Case(["keys", "create", "--tenant", "initech", "--policies", "{policies}"], 3, "unknown tenant 'initech'"),
        Case(
            ["keys", "create", "--tenant", "acme", "--id", "acme1", "--policies", "{policies}"],
            3,
            "'acme1' is taken by",
        ),
        Case(
            ["keys", "create", "--tenant", "initech", "--dsn", "{migrated}", "--policies-from-config"],
            3,
            "unknown tenant 'initech'",
        ),
        Case(
            [
                "keys",
                "create",
                "--tenant",
                "acme",
                "--role",
                "nosuchrole",
                "--dsn",
                "{migrated}",
                "--policies-from-config",
            ],
            3,
            "unknown role 'nosuchrole'",
        ),
        Case(
            ["keys", "create", "--tenant", "acme", "--dsn", "{bare}", "--policies-from-config"],
            5,
            "`mcp-gateway db migrate`",
        ),
        Case(
            ["keys", "create", "--tenant", "acme", "--dsn", UNREACHABLE, "--policies-from-config"],
            4,
            "cannot reach PostgreSQL",
        ),
        # no --dsn: MGW_POSTGRES_DSN is the key store
        Case(
            ["keys", "create", "--tenant", "acme", "--policies-from-config"],
            4,
            "cannot reach PostgreSQL",
            env={"MGW_POSTGRES_DSN": UNREACHABLE},
        ),
        Case(
            ["keys", "create", "--tenant", "initech", "--policies-from-config"],
            3,
            "unknown tenant 'initech'",
            env={"MGW_POSTGRES_DSN": "{migrated}"},
        ),
    ],
    "keys list": [
        Case(["keys", "list"], 2, "say where the keys are", cwd="empty"),
        Case(["keys", "list", "--policies", "{tmp}/absent"], 6, "no such policy directory"),
        Case(["keys", "list", "--dsn", "{bare}"], 5, "`mcp-gateway db migrate`"),
        Case(["keys", "list"], 4, "cannot reach PostgreSQL", env={"MGW_POSTGRES_DSN": UNREACHABLE}, cwd="empty"),
    ],
    "keys revoke": [
        Case(["keys", "revoke", "nosuch", "--policies", "{policies}"], 3, "no key 'nosuch' in"),
        Case(["keys", "revoke", "nosuch", "--policies", "{flow_policies}"], 3, "no key 'nosuch' in"),
        Case(["keys", "revoke", "nosuch", "--dsn", "{migrated}"], 3, "no key 'nosuch' in PostgreSQL"),
        Case(["keys", "revoke", "k1", "--policies", "{tmp}/absent"], 6, "no such policy directory"),
        Case(["keys", "revoke"], 2, "the following arguments are required: key_id"),
        Case(["keys", "revoke", "k1"], 2, "say where the key is", cwd="empty"),
    ],
    "db migrate": [
        Case(["db", "migrate", "--dsn", UNREACHABLE], 4, "cannot reach PostgreSQL"),
        Case(["db", "migrate"], 4, "cannot reach PostgreSQL", env={"MGW_POSTGRES_DSN": UNREACHABLE}),
        Case(["db", "migrate"], 2, "give --dsn, set MGW_POSTGRES_DSN", cwd="empty"),
        Case(["db", "migrate", "--target", "x", "--dsn", "{migrated}"], 2, "argument --target: invalid int value"),
    ],
    "db status": [Case(["db", "status", "--dsn", UNREACHABLE], 4, "cannot reach PostgreSQL")],
    "db retention": [
        Case(["db", "retention", "--days", "x"], 2, "argument --days"),
        Case(["db", "retention", "--dsn", "{bare}"], 5, "PostgreSQL:"),
    ],
    "audit verify": [
        Case(["audit", "verify", "--file", "{tmp}/absent.jsonl"], 6, "absent.jsonl: No such file or directory"),
        Case(["audit", "verify", "--dsn", "{bare}"], 5, "PostgreSQL:"),
        Case(["audit", "verify", "--dsn", UNREACHABLE], 4, "cannot reach PostgreSQL"),
        Case(["audit", "verify", "--file", "a", "--dsn", "b"], 2, "not allowed with argument"),
    ],
    "audit bench": [Case(["audit", "bench", "--records", "many"], 2, "argument --records")],
    "schema": [
        Case(["schema", "--file", "nope.yaml"], 2, "argument --file: invalid choice"),
        Case(["schema", "--write", "{tmp}/a-file/schema"], 6, "a-file"),
    ],
}


def _create_db(server: str, name: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(server, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(go())


def _drop_db(server: str, name: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(server, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(go())


def _env(extra: dict[str, str]) -> dict[str, str]:
    """The process environment without any MGW_* of the machine's, plus the case's (an empty value: unset)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGW_")}
    env["MGW_APIKEY_SECRET"] = SECRET
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def cli(argv: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *argv], cwd=cwd, env=_env(env or {}), capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    _require("PostgreSQL", 5432)
    tmp = tmp_path_factory.mktemp("cli-errors")
    policies = tmp / "policies"
    shutil.copytree(FIXTURES / "good", policies)
    flow = tmp / "flow-policies"
    shutil.copytree(FIXTURES / "good", flow)
    # written by hand in inline style (PyYAML would tag the expiry `!!timestamp`, which nobody writes)
    data = yaml.safe_load((flow / "keys.yaml").read_text())
    for k in data["keys"]:
        k.update({f: v.isoformat() for f, v in k.items() if isinstance(v, datetime)})
    (flow / "keys.yaml").write_text(
        "# inline entries\nkeys:\n"
        + "".join(f"  - {yaml.safe_dump(k, default_flow_style=True, width=1000)}" for k in data["keys"])
    )
    (tmp / "a-file").write_text("not a directory\n")
    empty = tmp / "empty.yaml"
    empty.write_text("{}\n")
    bad = tmp / "bad.yaml"
    bad.write_text("listen: {port: many}\n")
    broken_run = tmp / "run.yaml"
    broken_policies = tmp / "broken-policies"
    shutil.copytree(FIXTURES / "good", broken_policies)
    shutil.copy(FIXTURES / "broken" / "unknown_tenant" / "keys.yaml", broken_policies / "keys.yaml")
    broken_run.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": free_port()},
                "policies_dir": str(broken_policies),
                "audit": {"sink": "file", "path": str(tmp / "audit.jsonl")},
            }
        )
    )
    (tmp / "empty").mkdir()
    token = secrets.token_hex(4)
    migrated_name, bare_name = f"mgw_clierr_m_{token}", f"mgw_clierr_b_{token}"
    _create_db(SHARED_PG_DSN, migrated_name)
    _create_db(SHARED_PG_DSN, bare_name)
    try:
        migrated = with_db(SHARED_PG_DSN, migrated_name)
        done = cli(["db", "migrate", "--dsn", migrated])
        assert done.returncode == 0, done.stderr
        yield World(tmp, policies, flow, migrated, with_db(SHARED_PG_DSN, bare_name), empty, bad, broken_run)
    finally:
        _drop_db(SHARED_PG_DSN, migrated_name)
        _drop_db(SHARED_PG_DSN, bare_name)


def _fill(text: str, w: World) -> str:
    return text.format(
        tmp=w.tmp,
        policies=w.policies,
        flow_policies=w.flow_policies,
        migrated=w.migrated,
        bare=w.bare,
        empty_config=w.empty_config,
        bad_config=w.bad_config,
    )


def _config_for(w: World) -> Path:
    """A config.yaml whose policies_dir is the fixture copy (for `keys create --dsn` without --policies)."""
    cfg = w.tmp / "with-policies.yaml"
    if not cfg.exists():
        cfg.write_text(
            yaml.safe_dump({"policies_dir": str(w.policies), "api_keys": {"hmac_secret": {"env": "MGW_APIKEY_SECRET"}}})
        )
    return cfg


def test_every_documented_command_has_bad_input_cases() -> None:
    documented = documented_commands()
    assert {"run", "check", "keys create", "keys revoke", "db migrate", "audit verify"} <= documented  # the scan works
    assert documented - set(CASES) == set()


ALL = [
    pytest.param(cmd, i, id=f"{cmd.replace(' ', '-')}-{i}") for cmd, cases in CASES.items() for i in range(len(cases))
]


@pytest.mark.parametrize(("command", "index"), ALL)
def test_bad_input_gives_one_line_and_the_documented_code(world: World, command: str, index: int) -> None:
    case = CASES[command][index]
    argv = [_fill(a, world) for a in case.argv]
    if "--policies-from-config" in argv:
        argv.remove("--policies-from-config")
        argv += ["--config", str(_config_for(world))]
    env = {k: _fill(v, world) for k, v in case.env.items()}
    # forked, not a new interpreter: fifty imports of the gateway cost a minute of make test's CPU. The fork runs
    # what the console script runs (tests/forked_cli.py); on 2026-12-07 all cases gave the same exit code, stdout
    # and stderr both ways. The tests below run the real console script.
    r = forked_cli.run(argv, _env(env), world.tmp / "empty" if case.cwd == "empty" else ROOT)
    shown = f"argv={argv}\nexit={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    assert "Traceback" not in r.stdout + r.stderr, shown
    lines = r.stderr.splitlines()
    assert 1 <= len(lines) <= case.lines, shown
    assert lines[0].startswith(("error: ", "mcp-gateway")), shown
    assert all(len(line) < 400 for line in lines), shown
    assert case.says in lines[0], shown
    assert r.returncode == case.code, shown


def test_run_refuses_a_broken_policy_and_warns_about_unknown_variables(world: World) -> None:
    r = cli(["run", "--config", str(world.broken_run_config)], {"MGW_PROT": "9000"})
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    warning = [line for line in r.stderr.splitlines() if "MGW_PROT" in line]
    assert len(warning) == 1 and '"closest":"MGW_PORT"' in warning[0] and '"level":"warning"' in warning[0], r.stderr


def test_check_warns_about_unknown_variables_and_still_passes(world: World) -> None:
    r = cli(["check", str(world.policies)], {"MGW_PROT": "9000", "MGW_HTTP__MAX_BODY_BYTES": "10", "MGW_TEST_X": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "warning: unknown environment variable MGW_PROT is ignored (did you mean MGW_PORT? a setting is "
        "MGW_SECTION__FIELD or a name in docs/foundation.md)"
    ]


def test_flow_style_key_is_listed_and_revoked(world: World) -> None:
    directory = world.tmp / "flow-revoke"
    shutil.copytree(world.flow_policies, directory)
    before = (directory / "keys.yaml").read_text()
    key_id = yaml.safe_load(before)["keys"][0]["id"]
    listed = cli(["keys", "list", "--policies", str(directory)])
    assert listed.returncode == 0 and f"policy\t{key_id}\t" in listed.stdout and "\tactive\t" in listed.stdout
    r = cli(["keys", "revoke", key_id, "--policies", str(directory)])
    assert r.returncode == 0 and r.stdout == f"revoked: {key_id}\n", r.stderr
    after = (directory / "keys.yaml").read_text()
    assert after.startswith("# inline entries\nkeys:\n  - {") and "revoked: true}" in after.splitlines()[2]
    assert after.splitlines()[3:] == before.splitlines()[3:]  # the other entries untouched
    listed = cli(["keys", "list", "--policies", str(directory)])
    assert f"policy\t{key_id}\tacme\t" in listed.stdout and "revoked" in listed.stdout.splitlines()[1]


def test_postgres_key_from_env_dsn_for_a_known_tenant(world: World) -> None:
    """MGW_POSTGRES_DSN is the store when --dsn and --policies are not given; a known tenant is accepted."""
    r = cli(
        ["keys", "create", "--tenant", "acme", "--config", str(_config_for(world))],
        {"MGW_POSTGRES_DSN": world.migrated},
    )
    assert r.returncode == 0, r.stderr
    key_id = re.search(r"^id: (\w+)$", r.stdout, re.MULTILINE)
    assert key_id is not None and "# stored in PostgreSQL" in r.stderr
    listed = cli(["keys", "list", "--dsn", world.migrated])
    assert f"postgres\t{key_id.group(1)}\tacme\tread\tactive" in listed.stdout
