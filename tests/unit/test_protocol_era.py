"""2026-07-28 header checks (pure logic): what is modern, what must match, base64 values, case rules."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from gateway.errors import HeaderMismatch, InvalidRequest
from gateway.jsonrpc import parse_message
from gateway.protocol_era import check_headers, classify, decode_header_value, is_modern_version

pytestmark = pytest.mark.unit

V = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": V, "io.modelcontextprotocol/clientCapabilities": {}}


def _env(method: str = "tools/call", **params: Any) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"_meta": META, **params}}
    return parse_message(orjson.dumps(body), V).envelopes[0]


def _headers(**h: str) -> CIMultiDict[str]:
    base = {"MCP-Protocol-Version": V, "Mcp-Method": "tools/call", "Mcp-Name": "t"}
    base.update(h)
    return CIMultiDict({k: v for k, v in base.items() if v != "-"})


def test_versions() -> None:
    assert is_modern_version("2026-07-28") and is_modern_version("2027-01-01")
    assert not is_modern_version("2025-11-25") and not is_modern_version(None) and not is_modern_version("junk")


def test_matching_headers_pass_and_names_are_case_insensitive() -> None:
    env = _env(name="t", arguments={"Region": "us-west1", "n": 42, "flag": True})
    h = CIMultiDict(
        {
            "mcp-protocol-version": V,
            "MCP-METHOD": "tools/call",
            "mcp-name": "t",
            "MCP-PARAM-REGION": "us-west1",
            "Mcp-Param-N": "42.0",
            "Mcp-Param-Flag": "true",
            "Mcp-Param-Unknown": "anything",  # not an argument: forwarded, not judged
        }
    )
    check_headers(h, env, V)


@pytest.mark.parametrize(
    "headers",
    [
        {"Mcp-Method": "-"},
        {"Mcp-Method": "Tools/Call"},  # values are case-sensitive
        {"Mcp-Name": "-"},
        {"Mcp-Name": "other"},
        {"MCP-Protocol-Version": "-"},
        {"MCP-Protocol-Version": "2027-01-01"},
        {"Mcp-Param-Region": "eu"},
        {"Mcp-Param-Region": "=?base64?ZXU=?="},
        {"Mcp-Param-Region": "=?base64?%%%?="},
        {"Mcp-Param-Region": "us\x01"},
        {"Mcp-Param-N": "41"},
        {"Mcp-Param-Flag": "True"},
    ],
)
def test_mismatch(headers: dict[str, str]) -> None:
    env = _env(name="t", arguments={"region": "us-west1", "n": 42, "flag": True})
    with pytest.raises(HeaderMismatch) as info:
        check_headers(_headers(**headers), env, V)
    assert info.value.status == 400 and info.value.code == -32020


def test_base64_values_are_decoded() -> None:
    env = _env(name="t", arguments={"greeting": "Hello, 世界", "pad": " padded "})
    check_headers(
        _headers(
            **{"Mcp-Param-Greeting": "=?base64?SGVsbG8sIOS4lueVjA==?=", "Mcp-Param-Pad": "=?base64?IHBhZGRlZCA=?="}
        ),
        env,
        V,
    )
    assert decode_header_value("X", "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=") == "=?base64?literal?="


def test_name_for_resources_read_is_the_uri() -> None:
    env = _env("resources/read", uri="file:///a b")
    check_headers(_headers(**{"Mcp-Method": "resources/read", "Mcp-Name": "file:///a b"}), env, V)
    with pytest.raises(HeaderMismatch):
        check_headers(_headers(**{"Mcp-Method": "resources/read", "Mcp-Name": "file:///other"}), env, V)


def test_name_not_required_for_list() -> None:
    env = _env("tools/list")
    check_headers(_headers(**{"Mcp-Method": "tools/list", "Mcp-Name": "-"}), env, V)


class _Ctx:
    """Just what `classify` reads and writes."""

    def __init__(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.headers = CIMultiDict(headers)
        self.protocol_version = headers.get("MCP-Protocol-Version")
        self.message = parse_message(orjson.dumps(body), self.protocol_version)
        self.session_id: str | None = "s1"
        self.notes: dict[str, Any] = {}

    @property
    def envelopes(self) -> Any:
        return self.message.envelopes


def test_classify_eras() -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}
    legacy = _Ctx(init, {"MCP-Protocol-Version": "2025-06-18"})
    assert classify(legacy, "both") == "legacy"  # type: ignore[arg-type]
    assert legacy.session_id == "s1"
    with pytest.raises(InvalidRequest) as info:
        classify(legacy, "modern")  # type: ignore[arg-type]
    assert info.value.code == -32602

    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": META}}
    modern = _Ctx(call, {"MCP-Protocol-Version": V, "Mcp-Method": "tools/list", "Mcp-Session-Id": "s1"})
    assert classify(modern, "both") == "modern"  # type: ignore[arg-type]
    # the era never clears a session id: routing checks it against the binding like any other (issue 14, finding 2)
    assert modern.session_id == "s1"
    with pytest.raises(InvalidRequest) as info:
        classify(_Ctx(call, {"MCP-Protocol-Version": V, "Mcp-Method": "tools/list"}), "legacy")  # type: ignore[arg-type]
    assert info.value.code == -32022

    # the header alone makes a request modern: the body must then carry the version too
    bare = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
    with pytest.raises(HeaderMismatch):
        classify(_Ctx(bare, {"MCP-Protocol-Version": V, "Mcp-Method": "tools/list"}), "both")  # type: ignore[arg-type]
