"""One wrapper for every admin route: admin-scope check, the admin model, the answer, and audit whatever happens.

Admin operations rank high in the audit trail (risk rules), so none may go unrecorded: refusals (no credential,
no admin scope, a role the admin model refuses), backend failures and successes all produce a record, enqueued
without awaiting. The record belongs to the actor's tenant; when the operation concerns another tenant (an
operator creating a key for `beta`, a tenant admin trying to revoke one of `beta`'s keys), that tenant's trail gets
a copy, so its admin sees it through `/admin/audit`. Both copies name both tenants in `notes`.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.admin.auth import admin_error, require_admin
from gateway.admin.model import AdminRole, Reach, admin_role, grant_of
from gateway.audit.pipeline import AuditPipeline
from gateway.audit.record import AuditEvent
from gateway.auth.principal import Principal
from gateway.bounds import RPC_ID_MAX, bound
from gateway.clientip import ClientIpResolver
from gateway.errors import Forbidden, GatewayError
from gateway.net.frontdoor import send_continue
from gateway.policy.servers import ADMIN_SERVER
from gateway.policy.store import PolicyStore

AdminAction = Callable[[web.Request, Principal], Awaitable[web.Response]]
# maps a backend exception (database down, ...) to the refusal to answer with; None = not handled here
ErrorMapper = Callable[[Exception], GatewayError | None]
AdminHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# the tenant an admin operation concerns, when the action learns it (set before any refusal it raises)
TARGET_TENANT: web.RequestKey[str] = web.RequestKey("admin_target_tenant", str)


class AdminGate:
    """What every admin route goes through, given its components at route wiring (gateway/app.py): the policy
    store (the active chain's authn, the tenants a target may be), the client address resolver, the audit pipeline."""

    __slots__ = ("_audit", "_client_ip", "_policy")

    def __init__(self, policy: PolicyStore, client_ip: ClientIpResolver, audit: AuditPipeline) -> None:
        self._policy = policy
        self._client_ip = client_ip
        self._audit = audit

    def set_target_tenant(self, request: web.Request, tenant: str | None) -> None:
        """Name the tenant the running admin operation concerns; its trail gets the audit record too. Only tenants
        of the active policy count, so a made-up name never becomes an audit trail."""
        if tenant is not None and tenant in self._policy.active.snapshot.tenants:
            request[TARGET_TENANT] = tenant

    def route(self, operation: str, action: AdminAction, on_error: ErrorMapper | None = None) -> AdminHandler:
        """The handler of `operation`: see `audited_admin`."""
        return audited_admin(self._policy, self._client_ip, self._audit, operation, action, on_error)


def audited_admin(
    policy: PolicyStore,
    client_ip: ClientIpResolver,
    audit: AuditPipeline,
    operation: str,
    action: AdminAction,
    on_error: ErrorMapper | None = None,
) -> AdminHandler:
    """A handler for `operation` (recorded as the audit record's rpc_method, e.g. `admin/keys.create`)."""
    # an operation outside the admin model fails when the routes are wired (build_app), not at the first request
    grant = grant_of(operation)

    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.time()
        t0 = time.perf_counter()
        event = AuditEvent(
            ts_us=0,
            started_us=int(started * 1_000_000),
            # a header of up to 64 KiB: bounded before the event can wait in the audit queue (gateway/bounds.py)
            request_id=bound(request.headers.get("X-Request-ID") or uuid.uuid4().hex, RPC_ID_MAX),
            server=ADMIN_SERVER,
            transport="admin",
            http_method=request.method,
            client_ip=request.remote or "",
            rpc_method=operation,
            admin=True,
        )

        def refuse(err: GatewayError, default_stage: str) -> web.Response:
            event.refused_stage, event.refused_reason = err.stage or default_stage, err.reason
            event.http_status, event.rpc_error_code = err.status, err.code
            return admin_error(err, event.request_id)

        role: AdminRole | None = None
        try:
            try:
                principal = await require_admin(request, policy, client_ip)
            except GatewayError as err:
                return refuse(err, "authn")
            role = admin_role(principal)
            event.tenant, event.principal = principal.tenant, principal.subject
            # `Expect: 100-continue` is answered only now that the caller is known (gateway/net/frontdoor.py)
            await send_continue(request)
            event.key_id, event.auth_method = principal.key_id, principal.method
            event.notes = {"admin_role": role.value}
            try:
                if grant.reach(role) is Reach.NONE:
                    raise Forbidden(f"{grant.route} is for operators only", reason="operator_required", stage="authz")
                response = await action(request, principal)
            except GatewayError as err:
                return refuse(err, "admin")
            except Exception as exc:
                mapped = on_error(exc) if on_error is not None else None
                if mapped is None:
                    raise
                return refuse(mapped, "admin")
            event.http_status = response.status
            event.bytes_out = len(response.body) if isinstance(response.body, bytes) else 0
            return response
        finally:
            event.latency_s = time.perf_counter() - t0
            event.ts_us = int(time.time() * 1_000_000)
            target = request.get(TARGET_TENANT)
            if target is not None and target != event.tenant:
                notes = {**(event.notes or {}), "actor_tenant": event.tenant, "target_tenant": target}
                # the target tenant's trail names both sides; the actor's own copy of a refused attempt must
                # not, or a tenant admin could read in its trail which key ids and tenant names exist (its
                # refusal is the same 404/403 as for an id or tenant nobody has: red team)
                refused = event.refused_reason is not None and role is not AdminRole.OPERATOR
                own = event.notes if refused else notes
                audit.enqueue(dataclasses.replace(event, notes=own))
                audit.enqueue(dataclasses.replace(event, tenant=target, notes=notes))
            else:
                audit.enqueue(event)

    return handle
