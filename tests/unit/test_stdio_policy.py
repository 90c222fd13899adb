"""`transport: stdio` in servers.yaml: what loads, what `mcp-gateway check` refuses (file, path, reason), and the
child's environment and command built from the policy alone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from gateway.policy.loader import PolicyError, load_policy
from gateway.policy.stdio import STDIO_INSTANCE, StdioPolicy
from gateway.testing import policy_documents, write_policies
from gateway.upstream.stdio.launch import child_environment, launch_spec
from gateway.upstream.stdio.process import SpawnFailed

pytestmark = pytest.mark.unit


def _problems(tmp_path: Path, server: dict[str, Any]) -> list[tuple[str, str, str]]:
    write_policies(tmp_path, policy_documents({"tools": {"owner": "acme", **server}}))
    try:
        load_policy(tmp_path)
    except PolicyError as err:
        return [(p.file, p.path, p.reason) for p in err.problems]
    return []


def test_stdio_server_loads_with_its_one_instance(tmp_path: Path) -> None:
    stdio = {"command": "python3", "args": ["-m", "server"], "env": {"MODE": "fast", "API_TOKEN": {"env": "TOK"}}}
    write_policies(tmp_path, policy_documents({"tools": {"owner": "acme", "transport": "stdio", "stdio": stdio}}))
    snap = load_policy(tmp_path)
    server = snap.servers["tools"]
    assert [u.url for u in server.upstreams] == [STDIO_INSTANCE]
    assert server.stdio is not None and server.stdio.process == "per_session"
    assert server.stdio.args == ["-m", "server"]


@pytest.mark.parametrize(
    ("server", "path", "reason"),
    [
        (
            {"transport": "stdio", "stdio": {"command": "npx", "args": "-y server --flag"}},
            "servers.tools.stdio.args",
            "args must be a YAML list of strings, one per argument; a shell string is never parsed",
        ),
        (
            {"transport": "stdio", "stdio": {"command": "npx -y server"}},
            "servers.tools.stdio.command",
            "command is one program (a path or a name on PATH) without spaces; put its arguments in `args`",
        ),
        (
            {"transport": "stdio", "stdio": {"command": "srv", "env": {"GITHUB_TOKEN": "ghp_literal"}}},
            "servers.tools.stdio.env",
            "env.GITHUB_TOKEN looks like a secret: give it by reference ({env: NAME} or {file: path}), never as a "
            "literal in the policy",
        ),
        (
            {"transport": "stdio", "stdio": {"command": "srv", "env": {"1BAD": "x"}}},
            "servers.tools.stdio.env",
            "env name '1BAD' must be letters, digits and '_' (not starting with a digit)",
        ),
        (
            {"transport": "stdio", "stdio": {"command": "srv", "inherit_env": ["MGW_POSTGRES_DSN"]}},
            "servers.tools.stdio.inherit_env",
            "inherit_env: MGW_POSTGRES_DSN is the gateway's own setting and is never passed to a child",
        ),
        (
            {"transport": "stdio"},
            "servers.tools",
            "transport: stdio needs a `stdio` block (command, args, ...)",
        ),
        (
            {"transport": "stdio", "upstreams": [{"url": "http://x"}], "stdio": {"command": "srv"}},
            "servers.tools",
            "a stdio server has no `upstreams`: its process is given by `stdio`",
        ),
        (
            {"upstreams": [{"url": "http://127.0.0.1:1/mcp"}], "stdio": {"command": "srv"}},
            "servers.tools",
            "`stdio` is only for transport: stdio",
        ),
        (
            {"upstreams": [{"url": STDIO_INSTANCE}]},
            "servers.tools",
            f"{STDIO_INSTANCE} names a stdio process: use transport: stdio",
        ),
        (
            {"transport": "stdio", "stdio": {"command": "srv", "process": "pooled"}},
            "servers.tools.stdio.process",
            "Input should be 'per_session' or 'shared'",
        ),
        (
            {
                "transport": "stdio",
                "stdio": {"command": "srv", "max_processes_per_key": 9, "max_processes_per_tenant": 3},
            },
            "servers.tools.stdio",
            "max_processes_per_key must not exceed max_processes_per_tenant",
        ),
        ({}, "servers.tools", "upstreams: at least one upstream is required"),
    ],
)
def test_check_names_the_problem(tmp_path: Path, server: dict[str, Any], path: str, reason: str) -> None:
    problems = _problems(tmp_path, server)
    assert ("servers.yaml", path, reason) in [(f, p, r.removeprefix("Value error, ")) for f, p, r in problems], problems


def test_child_environment_is_built_from_the_policy_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tok").write_text("file-secret\n")
    monkeypatch.setenv("FROM_ENV", "env-secret")
    parent = {
        "PATH": "/usr/bin",
        "HOME": "/home/gw",
        "MGW_POSTGRES_DSN": "postgresql://secret",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "SHARED_NAME": "ok",
        "FROM_ENV": "env-secret",
    }
    policy = StdioPolicy.model_validate(
        {
            "command": "srv",
            "inherit_env": ["SHARED_NAME"],
            "env": {"MODE": "x", "API_TOKEN": {"file": "tok"}, "OTHER_KEY": {"env": "FROM_ENV"}},
        }
    )
    env = child_environment(policy, tmp_path, parent)
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/gw",
        "SHARED_NAME": "ok",
        "MODE": "x",
        "API_TOKEN": "file-secret",
        "OTHER_KEY": "env-secret",
    }


def test_missing_secret_names_the_reference_not_a_value(tmp_path: Path) -> None:
    policy = StdioPolicy.model_validate({"command": "srv", "env": {"API_TOKEN": {"env": "NOT_SET_ANYWHERE_42"}}})
    with pytest.raises(SpawnFailed, match=r"env\.API_TOKEN: environment variable NOT_SET_ANYWHERE_42 is not set"):
        child_environment(policy, tmp_path, {})


def test_launch_spec_resolves_command_and_cwd(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    exe = tmp_path / "bin-server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    policy = StdioPolicy.model_validate({"command": "./bin-server", "args": ["--a", "$(x)"], "cwd": "work"})
    spec = launch_spec(policy, tmp_path, {"PATH": os.defpath})
    assert spec.command == str(tmp_path / "bin-server")
    assert spec.args == ("--a", "$(x)")  # handed to execve as they are: no shell expands them
    assert spec.cwd == str(tmp_path / "work")
    with pytest.raises(SpawnFailed, match="not found on PATH"):
        launch_spec(StdioPolicy.model_validate({"command": "no-such-program-xyz"}), tmp_path, {"PATH": "/nonexistent"})
    with pytest.raises(SpawnFailed, match="is not a directory"):
        launch_spec(StdioPolicy.model_validate({"command": "sh", "cwd": "missing"}), tmp_path, {"PATH": os.defpath})
