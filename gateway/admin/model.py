"""The admin model: who may do what on `/admin/*`, in one table.

Every admin credential is an API key with the `admin` scope (JWTs never reach the admin API). Its role decides
how far it reaches:

- **operator** (`role: operator`): every tenant's keys and audit trails, every server with its upstream URLs, and
  policy reloads. Operator keys are issued by whoever runs the gateway (keys.yaml, `mcp-gateway keys`) or by another
  operator key.
- **tenant admin** (any other role): its own tenant only: its keys (never operator keys filed under it), its audit
  trail, the servers its tenant may reach without their upstream URLs, and no reload.

No key ever creates a key with more power than its own (`gateway/admin/grant.py`). `audited_admin` looks every
operation up here before running it, and refuses an operation this table does not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gateway.auth.principal import Principal

OPERATOR_ROLE = "operator"


class AdminRole(StrEnum):
    OPERATOR = "operator"
    TENANT_ADMIN = "tenant_admin"


class Reach(StrEnum):
    """How far an admin role reaches with one operation."""

    ALL = "every tenant"
    OWN = "own tenant"
    NONE = "refused"


@dataclass(frozen=True, slots=True)
class Grant:
    operator: Reach
    tenant_admin: Reach
    # the route, for the refusal message and the docs table
    route: str

    def reach(self, role: AdminRole) -> Reach:
        return self.operator if role is AdminRole.OPERATOR else self.tenant_admin


# operation (the audit record's rpc_method) -> who may run it; docs/identity.md "Admin model" is this table
ADMIN_ACTIONS: dict[str, Grant] = {
    "admin/keys.list": Grant(Reach.ALL, Reach.OWN, "GET /admin/keys"),
    "admin/keys.create": Grant(Reach.ALL, Reach.OWN, "POST /admin/keys"),
    "admin/keys.revoke": Grant(Reach.ALL, Reach.OWN, "POST /admin/keys/{id}/revoke, DELETE /admin/keys/{id}"),
    "admin/audit.query": Grant(Reach.ALL, Reach.OWN, "GET /admin/audit"),
    "admin/servers.list": Grant(Reach.ALL, Reach.OWN, "GET /admin/servers"),
    "admin/reload": Grant(Reach.ALL, Reach.NONE, "POST /admin/reload"),
    "admin/openapi": Grant(Reach.ALL, Reach.ALL, "GET /admin/openapi.json"),
}


def admin_role(principal: Principal) -> AdminRole:
    return AdminRole.OPERATOR if principal.role == OPERATOR_ROLE else AdminRole.TENANT_ADMIN


def is_operator(principal: Principal) -> bool:
    return principal.role == OPERATOR_ROLE


def grant_of(operation: str) -> Grant:
    """The grant of a known operation; an operation missing here is a programming error, caught at import."""
    grant = ADMIN_ACTIONS.get(operation)
    if grant is None:
        raise KeyError(f"admin operation {operation!r} is not in the admin model (gateway/admin/model.py)")
    return grant


def may_see_key(principal: Principal, key_tenant: str, key_role: str) -> bool:
    """Whether `principal` may list or revoke a key: operators every key; a tenant admin the keys of its own
    tenant except operator keys (an operator's key filed under a tenant still belongs to the operator)."""
    if is_operator(principal):
        return True
    return key_tenant == principal.tenant and key_role != OPERATOR_ROLE
