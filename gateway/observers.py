"""Registry of chain observers (audit, metrics, IP strikes); each subsystem adds its own at install time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.chain import Observer

OBSERVERS: web.AppKey[list[Observer]] = web.AppKey("observers", list)


def add_observer(app: web.Application, observer: Observer) -> None:
    if OBSERVERS not in app:
        app[OBSERVERS] = []
    app[OBSERVERS].append(observer)


def collect_observers(app: web.Application) -> tuple[Observer, ...]:
    if OBSERVERS not in app:
        return ()
    observers: list[Observer] = app[OBSERVERS]
    return tuple(observers)
