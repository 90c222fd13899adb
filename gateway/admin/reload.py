"""`POST /admin/reload` (admin scope): reload the policy files now, answering with the result.

The same reload as a file change or SIGHUP; a failed reload keeps the last good snapshot and answers 422 with
every problem (file, path, reason), so a deploy pipeline can gate on it.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.admin.audited import audited_admin
from gateway.auth.principal import Principal
from gateway.policy.store import POLICY


async def _reload(request: web.Request, principal: Principal) -> web.Response:
    result = await request.app[POLICY].reload("admin")
    body = {"ok": result.ok, "version": result.version, "changed": result.changed, "errors": list(result.errors)}
    return web.Response(status=200 if result.ok else 422, body=orjson.dumps(body), content_type="application/json")


reload_handler = audited_admin("admin/reload", _reload)


def install_routes(app: web.Application) -> None:
    app.router.add_post("/admin/reload", reload_handler)
