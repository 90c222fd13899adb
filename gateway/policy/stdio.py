"""The `stdio` block of a `transport: stdio` server (servers.yaml): which program the gateway runs, how, and how many.

Only this file names a command: the program, its arguments, working directory and environment come from the
operator's YAML and nothing else. Arguments are a list handed to `execve` (no shell ever parses them), and the
child's environment is built from scratch: a few neutral variables of the gateway's own (`PATH`, `HOME`, locale),
the names in `inherit_env`, and `env`, whose secrets are given by reference (`{env: NAME}` or `{file: path}`), like
`upstream_auth.secret`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gateway.policy.base import Model, PositiveFloat, PositiveInt, SecretRef

# the one upstream "instance" of a stdio server: breakers, health and session bindings are keyed by it
STDIO_INSTANCE = "stdio://process"

# variables of the gateway's environment every child gets (nothing secret; the rest only when named)
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# a literal value under a name like these is most likely a secret written into the YAML: refused
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIAL|PRIVATE)", re.IGNORECASE)
_MAX_ARG = 4096


class StdioPolicy(Model):
    """How the gateway runs a stdio MCP server and how many of its processes may live at once."""

    # the program: an absolute path, a path relative to the policy directory (`./bin/server`), or a name found on
    # the gateway's PATH. One program, never a command line: its arguments go in `args`.
    command: str = Field(min_length=1, max_length=_MAX_ARG)
    args: list[str] = Field(default_factory=list, max_length=256)
    # working directory; relative to the policy directory; default: the policy directory
    cwd: str | None = None
    # the child's own variables: literal values for non-secrets, `{env: NAME}` / `{file: path}` for secrets
    env: dict[str, str | SecretRef] = Field(default_factory=dict)
    # names of the gateway's own environment variables the child may see (nothing else of it is passed)
    inherit_env: list[str] = Field(default_factory=list)
    # per_session: one process per client session (stdio servers keep per-client state); shared: one process for
    # every session, JSON-RPC ids and progress tokens remapped so clients cannot collide
    process: Literal["per_session", "shared"] = "per_session"
    # caps on live processes of this server: in all, per tenant, per credential (API key, JWT subject, address)
    max_processes: PositiveInt = 100
    max_processes_per_tenant: PositiveInt = 50
    max_processes_per_key: PositiveInt = 10
    # a session without a request and without an open GET stream for this long ends (its process with it)
    idle_timeout_seconds: PositiveFloat = 300.0
    # how long a process may take to answer `initialize` (its start-up included)
    start_timeout_seconds: PositiveFloat = 30.0
    # stop: stdin closed, then SIGTERM to the process group, then after this long SIGKILL
    stop_grace_seconds: PositiveFloat = 2.0
    # after a crash the next start waits restart_backoff_seconds, doubled per crash in a row up to the max
    restart_backoff_seconds: PositiveFloat = 0.5
    max_restart_backoff_seconds: PositiveFloat = 30.0
    # a longer line on stdout is a protocol error (the process is stopped); stderr lines are cut to max_log_line
    max_message_bytes: PositiveInt = 16 * 1024 * 1024
    # messages waiting for one client that reads slower than the server writes (one POST's answer stream, one GET
    # stream, or what is held until a GET stream opens); past it that client is cut off, not the gateway's memory
    max_queued_bytes: PositiveInt = 32 * 1024 * 1024
    max_log_line: PositiveInt = Field(2048, le=65536)
    # stderr lines per second per process written to the gateway log (a burst of 5x); the rest are counted
    log_lines_per_second: PositiveFloat = 20.0

    @field_validator("args", mode="before")
    @classmethod
    def _args_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError("args must be a YAML list of strings, one per argument; a shell string is never parsed")
        return v

    @field_validator("command")
    @classmethod
    def _one_program(cls, v: str) -> str:
        if "\x00" in v or any(c.isspace() for c in v):
            raise ValueError(
                "command is one program (a path or a name on PATH) without spaces; put its arguments in `args`"
            )
        return v

    @field_validator("args")
    @classmethod
    def _arg_text(cls, v: list[str]) -> list[str]:
        for i, arg in enumerate(v):
            if "\x00" in arg or len(arg) > _MAX_ARG:
                raise ValueError(f"args[{i}] must be at most {_MAX_ARG} characters without NUL")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str | SecretRef]) -> dict[str, str | SecretRef]:
        for name, value in v.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"env name {name!r} must be letters, digits and '_' (not starting with a digit)")
            if isinstance(value, str):
                if "\x00" in value:
                    raise ValueError(f"env.{name} contains NUL")
                if _SECRET_NAME.search(name):
                    raise ValueError(
                        f"env.{name} looks like a secret: give it by reference ({{env: NAME}} or {{file: path}}), "
                        "never as a literal in the policy"
                    )
        return v

    @field_validator("inherit_env")
    @classmethod
    def _inherit(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _ENV_NAME.match(name):
                raise ValueError(f"inherit_env name {name!r} must be letters, digits and '_'")
            if name.startswith("MGW_"):
                raise ValueError(f"inherit_env: {name} is the gateway's own setting and is never passed to a child")
        return v

    @model_validator(mode="after")
    def _caps(self) -> StdioPolicy:
        if self.max_processes_per_key > self.max_processes_per_tenant:
            raise ValueError("max_processes_per_key must not exceed max_processes_per_tenant")
        if self.max_processes_per_tenant > self.max_processes:
            raise ValueError("max_processes_per_tenant must not exceed max_processes")
        if self.restart_backoff_seconds > self.max_restart_backoff_seconds:
            raise ValueError("restart_backoff_seconds must not exceed max_restart_backoff_seconds")
        if self.max_queued_bytes < self.max_message_bytes:
            raise ValueError("max_queued_bytes must be at least max_message_bytes (one message must fit)")
        return self
