"""`POST /admin/reload` (admin scope): reload the policy files now, answering with the result.

The same reload as a file change or SIGHUP; a failed reload keeps the last good snapshot and answers 422 with
every problem (file, path, reason), so a deploy pipeline can gate on it.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.admin.audited import AdminGate
from gateway.auth.principal import Principal
from gateway.policy.store import PolicyStore


def add_routes(app: web.Application, gate: AdminGate, policy: PolicyStore) -> None:
    async def reload(request: web.Request, principal: Principal) -> web.Response:
        result = await policy.reload("admin")
        body = {"ok": result.ok, "version": result.version, "changed": result.changed, "errors": list(result.errors)}
        status = 200 if result.ok else 422
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")

    app.router.add_post("/admin/reload", gate.route("admin/reload", reload))
