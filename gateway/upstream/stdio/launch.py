"""The launch spec of a stdio server, from the operator's policy alone.

Nothing of a request is an input here: the function takes the server's policy and the policy directory, never a
request context, so no client value can reach a command line, a working directory or an environment variable.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from gateway.policy.stdio import BASE_ENV, StdioPolicy
from gateway.upstream.stdio.process import LaunchSpec, SpawnFailed


def child_environment(policy: StdioPolicy, base_dir: Path, parent: Mapping[str, str]) -> dict[str, str]:
    """The child's whole environment: BASE_ENV and `inherit_env` from `parent` (when set there), then `env`."""
    env: dict[str, str] = {}
    for name in (*BASE_ENV, *policy.inherit_env):
        value = parent.get(name)
        if value is not None:
            env[name] = value
    for name, ref in policy.env.items():
        if isinstance(ref, str):
            env[name] = ref
            continue
        try:
            env[name] = ref.resolve(base_dir)
        except LookupError as exc:
            # the reference's name, never a value
            raise SpawnFailed(f"env.{name}: {exc}") from None
    return env


def resolve_command(command: str, cwd: Path, path: str | None) -> str:
    """An executable path for `command`: a path (relative to `cwd`) or a name searched on the child's PATH."""
    if "/" in command:
        candidate = Path(command)
        if not candidate.is_absolute():
            candidate = cwd / candidate
        if not os.access(candidate, os.X_OK) or not candidate.is_file():
            raise SpawnFailed(f"command {command!r} is not an executable file")
        return str(candidate)
    found = shutil.which(command, path=path)
    if found is None:
        raise SpawnFailed(f"command {command!r} not found on PATH")
    return found


def launch_spec(policy: StdioPolicy, base_dir: Path, parent: Mapping[str, str] | None = None) -> LaunchSpec:
    env = child_environment(policy, base_dir, os.environ if parent is None else parent)
    cwd = Path(policy.cwd) if policy.cwd is not None else base_dir
    if not cwd.is_absolute():
        cwd = base_dir / cwd
    if not cwd.is_dir():
        raise SpawnFailed(f"cwd {policy.cwd!r} is not a directory")
    return LaunchSpec(
        command=resolve_command(policy.command, base_dir, env.get("PATH")),
        args=tuple(policy.args),
        cwd=str(cwd),
        env=env,
        max_message_bytes=policy.max_message_bytes,
        max_log_line=policy.max_log_line,
        log_lines_per_second=policy.log_lines_per_second,
        stop_grace=policy.stop_grace_seconds,
    )
