"""Extra validation hooks that need more than the schema (CIDRs parse, secrets resolve, patterns compile).

Each concern registers a checker here so `mcp-gateway check` catches what would otherwise fail at reload.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from gateway.auth.checks import check_identity
from gateway.policy.base import PolicyProblem
from gateway.policy.model import PolicySet

Checker = Callable[[PolicySet], list[PolicyProblem]]


def _check_cidrs(policy: PolicySet) -> list[PolicyProblem]:
    out: list[PolicyProblem] = []
    for i, key in enumerate(policy.keys.keys):
        for j, cidr in enumerate(key.allow_ips):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                out.append(PolicyProblem("keys.yaml", f"keys[{i}].allow_ips[{j}]", f"not an IP network: {cidr!r}"))
    for j, cidr in enumerate(policy.limits.ddos.allowlist):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            out.append(PolicyProblem("limits.yaml", f"ddos.allowlist[{j}]", f"not an IP network: {cidr!r}"))
    return out


CHECKERS: list[Checker] = [_check_cidrs, check_identity]


def run_compile_checks(policy: PolicySet) -> list[PolicyProblem]:
    problems: list[PolicyProblem] = []
    for check in CHECKERS:
        problems.extend(check(policy))
    return problems
