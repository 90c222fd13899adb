"""`MGW_*` environment variables -> settings, and the names nobody reads.

Two ways to set a config.yaml value from the environment (docs/foundation.md, "Environment overrides"):
- the documented short names (`MGW_PORT`, `MGW_REDIS_URL`, ... the alias table in gateway/settings.py), and
- the prefix rule for any setting: `MGW_` + the dotted path in upper case with `__` between the levels, e.g.
  `MGW_HTTP__MAX_BODY_BYTES` for `http.max_body_bytes`, `MGW_AUDIT__RISK__DEFAULT`, `MGW_WORKERS` (top level).

The names come from walking the Settings model, so a setting added to the model has its variable at once. A small
explicit mapper rather than pydantic-settings: config.yaml stays the base (read with the duplicate-key loader), the
documented aliases keep working, and an invalid value is still reported with the variable that set it.

A `MGW_*` name that is neither, nor one the gateway uses internally or a secret reference names
(`{env: MGW_...}`), is a typo the gateway would otherwise ignore in silence: `unknown_env` finds them with the
closest known name for the warning.
"""

from __future__ import annotations

import difflib
import json
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from gateway.policy.base import SecretRef

PREFIX = "MGW_"
LEVEL = "__"
# set by the gateway for its own worker processes (gateway/net/workers.py, gateway/metrics.py)
INTERNAL = frozenset({"MGW_WORKER_INDEX", "MGW_WORKER_SETTINGS", "MGW_SUPERVISOR_PID"})
# the test suite's and the benchmark's own variables (tests/, tests/perf/): never settings, never warned about
RESERVED_PREFIXES = ("MGW_TEST_", "MGW_BENCH_")
# derived from where config.yaml is, not a setting of its own
_NOT_FROM_ENV = frozenset({"base_dir"})


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def leaf_settings(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """Dotted path -> kind (`list`, `dict` or `scalar`) of every value the prefix rule can set."""
    out: dict[str, str] = {}
    for name, field in model.model_fields.items():
        if not prefix and name in _NOT_FROM_ENV:
            continue
        dotted = prefix + name
        annotation = _unwrap(field.annotation)
        if _is_model(annotation):
            out.update(leaf_settings(annotation, dotted + "."))
        elif get_origin(annotation) in (list, tuple, set, frozenset):
            out[dotted] = "list"
        elif get_origin(annotation) is dict:
            out[dotted] = "dict"
        else:
            out[dotted] = "scalar"
    return out


def prefix_name(dotted: str) -> str:
    """`http.max_body_bytes` -> `MGW_HTTP__MAX_BODY_BYTES`."""
    return PREFIX + LEVEL.join(part.upper() for part in dotted.split("."))


def convert(kind: str, raw: str) -> Any:
    """The value for a setting of this kind. Empty means unset (null); a list is comma-separated or a JSON array;
    a mapping is a JSON object. ValueError says what was expected."""
    if raw == "":
        return [] if kind == "list" else None
    if kind == "list":
        if raw.lstrip().startswith("["):
            value = json.loads(raw)
            if not isinstance(value, list):
                raise ValueError("expected a JSON array or a comma-separated list")
            return value
        return [part.strip() for part in raw.split(",") if part.strip()]
    if kind == "dict":
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError('expected a JSON object, e.g. {"name": "value"}') from None
        if not isinstance(value, dict):
            raise ValueError('expected a JSON object, e.g. {"name": "value"}')
        return value
    return raw


@dataclass(frozen=True)
class Assignment:
    dotted: str
    var: str
    value: Any


@dataclass(frozen=True)
class EnvProblem:
    var: str
    message: str


def env_assignments(
    env: Mapping[str, str], aliases: Mapping[str, str], model: type[BaseModel]
) -> tuple[list[Assignment], list[EnvProblem]]:
    """What the environment sets, and the problems: a value of the wrong form, or one setting given by two
    variables with different values (`MGW_PORT` and `MGW_LISTEN__PORT`)."""
    leaves = leaf_settings(model)
    by_name = {prefix_name(dotted): dotted for dotted in leaves}
    chosen: dict[str, Assignment] = {}
    problems: list[EnvProblem] = []
    for var in sorted(env):
        dotted = aliases.get(var) or by_name.get(var)
        if dotted is None:
            continue
        raw = env[var]
        try:
            value = convert(leaves.get(dotted, "scalar"), raw)
        except ValueError as exc:
            problems.append(EnvProblem(var, f"{dotted} (from environment variable {var}): {exc}"))
            continue
        before = chosen.get(dotted)
        if before is not None and before.value != value:
            problems.append(
                EnvProblem(
                    var,
                    f"{dotted} is set by both {before.var} and {var} with different values; unset one of them",
                )
            )
            continue
        chosen[dotted] = Assignment(dotted, var, value)
    return list(chosen.values()), problems


def known_names(aliases: Iterable[str], model: type[BaseModel], references: Iterable[str] = ()) -> set[str]:
    return {*aliases, *(prefix_name(d) for d in leaf_settings(model)), *INTERNAL, *references}


def unknown_env(
    env: Mapping[str, str], aliases: Iterable[str], model: type[BaseModel], references: Iterable[str] = ()
) -> list[tuple[str, str | None]]:
    """`MGW_*` names nothing reads, each with the closest known name (None when nothing is close)."""
    known = known_names(aliases, model, references)
    out: list[tuple[str, str | None]] = []
    for var in sorted(env):
        if not var.startswith(PREFIX) or var in known or var.startswith(RESERVED_PREFIXES):
            continue
        close = difflib.get_close_matches(var, sorted(known), n=1, cutoff=0.6)
        out.append((var, close[0] if close else None))
    return out


def secret_references(*models: BaseModel | None) -> set[str]:
    """Environment variable names that `{env: NAME}` secret references in these models (at any depth) read."""
    names: set[str] = set()
    seen: set[int] = set()

    def walk(value: Any) -> None:
        if id(value) in seen:
            return
        if isinstance(value, SecretRef):
            if value.env is not None:
                names.add(value.env)
        elif isinstance(value, BaseModel):
            seen.add(id(value))
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                walk(item)

    for model in models:
        if model is not None:
            walk(model)
    return names
