"""Checks `mcp-gateway run` makes before it starts anything: each problem is one line naming the setting and the
fix, and the process exits non-zero, instead of a traceback from deep inside start-up (a port in use, a malformed
Redis URL) or a gateway that starts and then refuses every API key (an unreadable secret file)."""

from __future__ import annotations

import contextlib
import errno
import socket
from pathlib import Path

from redis.asyncio.connection import parse_url

from gateway.settings import Settings
from gateway.tracing.settings import problems as tracing_problems


def problems(settings: Settings) -> list[str]:
    out: list[str] = []
    url = settings.redis.url
    if url:
        try:
            parse_url(url)
        except ValueError as exc:
            out.append(
                f"redis.url (MGW_REDIS_URL) is not a Redis URL ({exc}); use redis://host:port/db, rediss://... or "
                "unix:///path/to/socket"
            )
    secret = settings.api_keys.hmac_secret
    if secret.file is not None:
        try:
            secret.resolve(Path(settings.base_dir))
        except LookupError as exc:
            out.append(
                f"api_keys.hmac_secret: {exc}; create it (for example `openssl rand -hex 32 > {secret.file}`) or "
                "point the setting at the mounted secret"
            )
    out.extend(tracing_problems(settings.tracing, Path(settings.base_dir)))
    port_problem = _port_in_use(settings.listen.host, settings.listen.port, "listen", "MGW_PORT (or --port)")
    if port_problem:
        out.append(port_problem)
    admin = settings.admin_listen
    if admin.port is not None:
        admin_problem = _port_in_use(admin.host, admin.port, "admin_listen", "MGW_ADMIN_PORT")
        if admin_problem:
            out.append(admin_problem)
    return out


def _port_in_use(host: str, port: int, setting: str, override: str) -> str | None:
    """A trial bind without SO_REUSEPORT: it fails on a port another process listens on, even one that shares its
    port between workers. Port 0 (any free port) and names that do not resolve are left to the real bind."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return None
    for family, kind, proto, _, addr in infos[:1]:
        with contextlib.closing(socket.socket(family, kind, proto)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (
                        f"{setting}.port: {host}:{port} is already in use (another gateway or service?); stop it, "
                        f"or set {setting}.port / {override} to a free port"
                    )
                if exc.errno == errno.EACCES:
                    return f"{setting}.port: no permission to listen on {host}:{port}; use a port above 1023"
                return f"{setting}: cannot listen on {host}:{port}: {exc.strerror}"
    return None
