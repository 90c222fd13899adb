"""Start-up checks (gateway/preflight.py): a port in use, on the main or the admin listener, is one line naming the
setting and its override."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from gateway.preflight import problems
from gateway.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_free_ports_pass() -> None:
    settings = Settings.model_validate(
        {
            "listen": {"port": free_port()},
            "admin_listen": {"port": free_port()},
            "api_keys": {"hmac_secret": {"env": "X"}},
        }
    )
    assert problems(settings) == []


def test_the_admin_port_in_use_is_named(busy_port: int) -> None:
    settings = Settings.model_validate({"listen": {"port": free_port()}, "admin_listen": {"port": busy_port}})
    (line,) = problems(settings)
    assert line.startswith(f"admin_listen.port: 127.0.0.1:{busy_port} is already in use") and "MGW_ADMIN_PORT" in line


def test_the_main_port_in_use_is_named(busy_port: int) -> None:
    (line,) = problems(Settings.model_validate({"listen": {"port": busy_port}}))
    assert line.startswith(f"listen.port: 127.0.0.1:{busy_port} is already in use") and "MGW_PORT" in line


def test_no_admin_listener_no_admin_check(busy_port: int) -> None:
    assert problems(Settings.model_validate({"listen": {"port": free_port()}})) == []
