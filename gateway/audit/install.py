"""Wiring of this subsystem into the app. PLACEHOLDER: nothing to install until its issue lands."""

from __future__ import annotations

from aiohttp import web

from gateway.settings import Settings


def install(app: web.Application, settings: Settings) -> None:
    return None
