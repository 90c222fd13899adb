"""Load `policies/*.yaml`, validate with precise errors (file, path, reason), cross-check, build a Snapshot.

`mcp-gateway check` and every reload run exactly this code, so an edit that passes `check` loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.policy.base import PolicyError, PolicyProblem, is_glob
from gateway.policy.compilers import run_compile_checks
from gateway.policy.model import POLICY_FILES, PolicySet
from gateway.policy.snapshot import Snapshot

# the problem types live in policy/base.py (below the compile checks); callers keep importing them from here
__all__ = ["PolicyError", "PolicyProblem", "StrictYamlLoader", "load_policy", "no_servers_problem"]


def _loc_to_path(loc: tuple[int | str, ...], data: Any = None) -> str:
    """`("servers", "x", "upstreams", 0)` -> `servers.x.upstreams[0]`, walking the input alongside.

    Pydantic adds the name of each union member it tried (`list[int]`, `literal['5xx']`) to `loc`; those are not
    places in the file, so a string part that is not a key of the data at that point (and is not the last part, a
    missing or unknown key) is left out.
    """
    out = ""
    cur: Any = data
    for i, part in enumerate(loc):
        if isinstance(part, int) and not (isinstance(cur, dict) and part in cur):
            out += f"[{part}]"
            cur = cur[part] if isinstance(cur, list) and 0 <= part < len(cur) else None
            continue
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif data is not None and (i < len(loc) - 1 or not isinstance(cur, dict)):
            continue  # a union member's tag
        else:
            cur = None
        out += f".{part}" if out else str(part)
    return out


def _message(err: Any) -> str:
    msg = str(err["msg"])
    # pydantic's prefix for a ValueError raised by a validator adds nothing for the reader
    return msg.removeprefix("Value error, ")


class StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys: PyYAML keeps the last silently, so a server or tenant
    defined twice would lose its first definition without a word."""


def _construct_mapping(loader: StrictYamlLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` keys may be overridden explicitly; that is what merging is for
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictYamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path, problems: list[PolicyProblem]) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(PolicyProblem(path.name, "", f"cannot read: {exc.strerror}"))
        return None
    except UnicodeDecodeError as exc:
        before = exc.object[: exc.start]
        line, column = before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1
        problems.append(PolicyProblem(path.name, f"line {line}, column {column}", "not UTF-8 text"))
        return None
    try:
        return yaml.load(text, Loader=StrictYamlLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        problems.append(PolicyProblem(path.name, where, f"invalid YAML: {problem}"))
        return None


def _validate_files(directory: Path, problems: list[PolicyProblem]) -> tuple[dict[str, Any], bytes]:
    parsed: dict[str, Any] = {}
    digest = hashlib.sha256()
    if not directory.is_dir():
        problems.append(PolicyProblem(str(directory), "", "policy directory does not exist"))
        return parsed, b""
    for extra in sorted(directory.glob("*.y*ml")):
        if extra.name not in POLICY_FILES:
            problems.append(
                PolicyProblem(extra.name, "", f"unknown policy file (expected one of {', '.join(POLICY_FILES)})")
            )
    for name, model in POLICY_FILES.items():
        path = directory / name
        if not path.exists():
            continue
        digest.update(name.encode() + b"\0")
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
        data = _read_yaml(path, problems)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.append(PolicyProblem(name, "", "top level must be a mapping"))
            continue
        try:
            parsed[name.removesuffix(".yaml")] = model.model_validate(data)
        except ValidationError as exc:
            # one problem per place: the failed members of a union share a path and become one "a, or b"
            by_path: dict[str, list[str]] = {}
            for err in exc.errors():
                msgs = by_path.setdefault(_loc_to_path(err["loc"], data), [])
                if _message(err) not in msgs:
                    msgs.append(_message(err))
            for where, msgs in by_path.items():
                problems.append(PolicyProblem(name, where, ", or ".join(msgs)))
    return parsed, digest.digest()


def _cross_check(policy: PolicySet, problems: list[PolicyProblem]) -> None:
    servers = policy.servers.servers
    tenants = policy.tenants.tenants
    for sname, server in servers.items():
        if server.owner is not None and server.owner not in tenants:
            problems.append(PolicyProblem("servers.yaml", f"servers.{sname}.owner", f"unknown tenant {server.owner!r}"))
        for i, t in enumerate(server.shared_with):
            if t != "*" and t not in tenants:
                problems.append(
                    PolicyProblem("servers.yaml", f"servers.{sname}.shared_with[{i}]", f"unknown tenant {t!r}")
                )
        for tool in server.retry.idempotent_tools:
            if not tool:
                problems.append(PolicyProblem("servers.yaml", f"servers.{sname}.retry.idempotent_tools", "empty name"))
    for tname, tenant in tenants.items():
        for i, s in enumerate(tenant.servers):
            if s not in servers:
                problems.append(PolicyProblem("tenants.yaml", f"tenants.{tname}.servers[{i}]", f"unknown server {s!r}"))
    seen: set[str] = set()
    for i, key in enumerate(policy.keys.keys):
        if key.id in seen:
            problems.append(PolicyProblem("keys.yaml", f"keys[{i}].id", f"duplicate key id {key.id!r}"))
        seen.add(key.id)
        if key.tenant not in tenants:
            problems.append(PolicyProblem("keys.yaml", f"keys[{i}].tenant", f"unknown tenant {key.tenant!r}"))
    for i, rule in enumerate(policy.access.rules):
        # shell-style patterns (authz matches them with fnmatchcase) may name servers and tenants not defined yet;
        # a plain name must exist, so a typo is caught instead of silently matching nothing
        if not is_glob(rule.tenant) and rule.tenant not in tenants:
            problems.append(PolicyProblem("access.yaml", f"rules[{i}].tenant", f"unknown tenant {rule.tenant!r}"))
        if not is_glob(rule.server) and rule.server not in servers:
            problems.append(PolicyProblem("access.yaml", f"rules[{i}].server", f"unknown server {rule.server!r}"))


def no_servers_problem(snapshot: Snapshot) -> PolicyProblem | None:
    """Why serving this snapshot would remove every route, unless servers.yaml says `allow_empty: true`.

    Checked by `mcp-gateway check` and by reloads, not by every load: a directory holding only keys is fine for the
    keys CLI, but an empty or truncated servers.yaml must never take every route down on reload."""
    if snapshot.servers or snapshot.policy.servers.allow_empty:
        return None
    return PolicyProblem(
        "servers.yaml",
        "servers",
        "no server is defined, so every route would be removed; set `allow_empty: true` if that is intended",
    )


def load_policy(directory: Path | str) -> Snapshot:
    """Validate and build a Snapshot, or raise `PolicyError` listing every problem found."""
    directory = Path(directory)
    problems: list[PolicyProblem] = []
    parsed, digest = _validate_files(directory, problems)
    if problems:
        raise PolicyError(problems)
    policy = PolicySet(**parsed)
    _cross_check(policy, problems)
    problems.extend(run_compile_checks(policy))
    if problems:
        raise PolicyError(problems)
    return Snapshot.build(policy, digest.hex()[:16], directory.resolve(), time.time())
