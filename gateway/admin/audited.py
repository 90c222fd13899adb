"""One wrapper for every admin route: admin-scope check, the answer, and an audit record whatever happens.

Admin operations rank high in the audit trail (risk rules), so none may go unrecorded: refusals (no credential,
no admin scope), backend failures and successes all produce one record, enqueued without awaiting.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.admin.auth import admin_error, require_admin
from gateway.auth.principal import Principal
from gateway.errors import GatewayError

AdminAction = Callable[[web.Request, Principal], Awaitable[web.Response]]
# maps a backend exception (database down, ...) to the refusal to answer with; None = not handled here
ErrorMapper = Callable[[Exception], GatewayError | None]
AdminHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def audited_admin(operation: str, action: AdminAction, on_error: ErrorMapper | None = None) -> AdminHandler:
    """A handler for `operation` (recorded as the audit record's rpc_method, e.g. `admin/keys.create`)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        from gateway.audit.install import AUDIT
        from gateway.audit.record import AuditEvent

        started = time.time()
        t0 = time.perf_counter()
        event = AuditEvent(
            ts_us=0,
            started_us=int(started * 1_000_000),
            request_id=request.headers.get("X-Request-ID") or uuid.uuid4().hex,
            server="_admin",
            transport="admin",
            http_method=request.method,
            client_ip=request.remote or "",
            rpc_method=operation,
            admin=True,
        )

        def refuse(err: GatewayError, default_stage: str) -> web.Response:
            event.refused_stage, event.refused_reason = err.stage or default_stage, err.reason
            event.http_status, event.rpc_error_code = err.status, err.code
            return admin_error(err)

        try:
            try:
                principal = await require_admin(request)
            except GatewayError as err:
                return refuse(err, "authn")
            event.tenant, event.principal = principal.tenant, principal.subject
            event.key_id, event.auth_method = principal.key_id, principal.method
            try:
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
            audit = request.app.get(AUDIT)
            if audit is not None:
                audit.enqueue(event)

    return handle
