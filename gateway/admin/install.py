"""Admin API routes that belong to no other subsystem (the others register their own: keys, audit, servers)."""

from __future__ import annotations

from aiohttp import web

from gateway.admin.reload import install_routes as install_reload
from gateway.settings import Settings


def install(app: web.Application, settings: Settings) -> None:
    install_reload(app)
