"""The warning about `MGW_*` variables nothing reads (a misspelled `MGW_PROT` would otherwise be ignored in
silence): one line per name, naming the closest known one. `mcp-gateway check` prints it on stderr; `mcp-gateway
run` logs it once at start-up. Secret references (`{env: MGW_...}`) in config.yaml and the policies are known
names, so the policy is read here too (a policy that does not load is reported by the caller, not here).
"""

from __future__ import annotations

import os
import sys

import structlog
from pydantic import BaseModel

from gateway.logging import configure_logging
from gateway.policy.loader import PolicyError, load_policy
from gateway.settings import ENV_OVERRIDES, Settings
from gateway.settings_env import secret_references, unknown_env

log = structlog.get_logger("gateway.settings")


def unknown_variables(*models: BaseModel | None) -> list[tuple[str, str | None, str]]:
    """(name, closest known name, sentence) per unknown `MGW_*` variable in the process environment."""
    references = secret_references(Settings(), *models)
    out: list[tuple[str, str | None, str]] = []
    for var, close in unknown_env(os.environ, ENV_OVERRIDES, Settings, references):
        hint = f"did you mean {close}? " if close else ""
        sentence = (
            f"unknown environment variable {var} is ignored ({hint}a setting is MGW_SECTION__FIELD or a name in "
            "docs/foundation.md)"
        )
        out.append((var, close, sentence))
    return out


def print_unknown_env(*models: BaseModel | None) -> None:
    for _, _, sentence in unknown_variables(*models):
        print(f"warning: {sentence}", file=sys.stderr)


def log_unknown_env(settings: Settings) -> None:
    # the policy is read only when there is something to warn about: its secret references may explain it
    if not unknown_variables(settings):
        return
    found = unknown_variables(settings, _policy_or_none(settings))
    if not found:
        return
    configure_logging(settings.logging.level, settings.logging.format)
    for var, close, sentence in found:
        log.warning(sentence, variable=var, closest=close)


def _policy_or_none(settings: Settings) -> BaseModel | None:
    try:
        return load_policy(settings.path(settings.policies_dir)).policy
    except PolicyError:
        return None
