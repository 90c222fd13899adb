"""Offline checks of the identity policy that need more than the schema, run by `mcp-gateway check` and every
reload (registered in gateway/policy/compilers.py): HS secrets resolve and are long enough, tool patterns and
access-rule roles are usable. The filters' `build()` repeats the secret check as a backstop."""

from __future__ import annotations

from gateway.policy.base import PolicyProblem
from gateway.policy.model import PolicySet

MIN_HS_SECRET_BYTES = 32


def check_identity(policy: PolicySet) -> list[PolicyProblem]:
    out: list[PolicyProblem] = []
    for name, server in policy.servers.servers.items():
        jwt_policy = server.auth.jwt
        if jwt_policy is None or "jwt" not in server.auth.methods or jwt_policy.hs_secret is None:
            continue
        where = f"servers.{name}.auth.jwt.hs_secret"
        ref = jwt_policy.hs_secret
        if ref.file is not None and not ref.file.startswith("/"):
            continue  # relative to the policy directory, which only the reload knows: checked when filters build
        try:
            secret = ref.resolve()
        except LookupError as exc:
            out.append(PolicyProblem("servers.yaml", where, str(exc)))
            continue
        if len(secret.encode()) < MIN_HS_SECRET_BYTES:
            out.append(PolicyProblem("servers.yaml", where, f"shorter than {MIN_HS_SECRET_BYTES} bytes"))
    for i, rule in enumerate(policy.access.rules):
        if not rule.role:
            out.append(PolicyProblem("access.yaml", f"rules[{i}].role", "empty role pattern (use '*' for any)"))
        for field_name in ("allow", "deny"):
            for j, pattern in enumerate(getattr(rule.tools, field_name)):
                if not pattern:
                    out.append(PolicyProblem("access.yaml", f"rules[{i}].tools.{field_name}[{j}]", "empty pattern"))
    return out
