"""The core never imports a server module: transports, filters, the forwarder, errors, the HTTP contract and the
audit hook know requests only through gateway/responder.py, so the lean server (gateway/net/h1server.py) can be switched
off or replaced without touching them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.net.h1server import FastBody, FastRequest
from gateway.responder import answers_itself, body_pending

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2] / "gateway"
SERVER_MODULES = {"gateway.net.h1server", "gateway.net.aiohttp_conn", "gateway.server"}
CORE = [
    *sorted((ROOT / "transports").glob("*.py")),
    *sorted((ROOT / "filters").glob("*.py")),
    *sorted((ROOT / "upstream").glob("*.py")),
    ROOT / "errors.py",
    ROOT / "context.py",
    ROOT / "chain.py",
    ROOT / "http_contract.py",
    ROOT / "responder.py",
    ROOT / "audit" / "answers.py",
]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_imports_no_server_module(path: Path) -> None:
    assert not imported(path) & SERVER_MODULES


def test_the_lean_servers_request_answers_itself() -> None:
    # its shape is checked statically: h1server hands it to a Handler typed to take an OwnResponder
    request = FastRequest.__new__(FastRequest)
    request.content = FastBody(b"{}", pending=True)
    request.headers = CIMultiDictProxy(CIMultiDict())
    assert answers_itself(request) and body_pending(request)
    request.content.pending = False
    assert not body_pending(request)
