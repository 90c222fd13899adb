"""MCP 2026-07-28 (stateless, "modern" era) request checks, for routes that serve it.

A POST is modern when its body carries `params._meta["io.modelcontextprotocol/protocolVersion"]` or its
`MCP-Protocol-Version` header names 2026-07-28 or later. Whoever parses the body must check the mirrored headers
against it (intermediaries route and limit on them): `MCP-Protocol-Version` = the `_meta` version, `Mcp-Method` =
`method`, `Mcp-Name` = `params.name`/`params.uri` (tools/call, resources/read, prompts/get), `Mcp-Param-<Name>` =
the argument it mirrors. Missing or different -> 400 with JSON-RPC -32020 (HeaderMismatch). Header names are
case-insensitive (the multidict is), values case-sensitive; `=?base64?...?=` values are compared decoded.

`Mcp-Param-*` limits: the gateway does not hold the tools' input schemas, so it cannot know which argument an
`x-mcp-header` name mirrors. It validates every such header's encoding, and compares the value with the top-level
argument of the same name (case-insensitive) when there is one; the upstream, which has the schema, checks the
rest. Unknown `Mcp-Param-*` headers are forwarded unchanged.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Literal

from gateway.context import RequestContext
from gateway.errors import INVALID_PARAMS, HeaderMismatch, InvalidRequest
from gateway.jsonrpc import Envelope, Kind

MODERN_VERSION = "2026-07-28"
META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"
UNSUPPORTED_PROTOCOL_VERSION = -32022
LEGACY_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
NAME_REQUIRED = frozenset({"tools/call", "resources/read", "prompts/get"})
PARAM_PREFIX = "mcp-param-"
_B64_START, _B64_END = "=?base64?", "?="

Era = Literal["legacy", "modern"]


def is_modern_version(version: str | None) -> bool:
    # versions are ISO dates, so string order is date order; later revisions keep the stateless model
    return version is not None and len(version) == 10 and version >= MODERN_VERSION


def decode_header_value(name: str, value: str) -> str:
    """The header's value as the client meant it: visible ASCII, space or tab; `=?base64?..?=` decoded (UTF-8)."""
    if any(not (0x20 <= ord(c) <= 0x7E or c == "\t") for c in value):
        raise HeaderMismatch(f"header {name} contains invalid characters", reason="header_invalid")
    if value.startswith(_B64_START) and value.endswith(_B64_END) and len(value) >= len(_B64_START) + len(_B64_END):
        encoded = value[len(_B64_START) : -len(_B64_END)]
        try:
            return base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise HeaderMismatch(f"header {name} has an invalid base64 value", reason="header_invalid") from None
    return value


def _same(header_value: str, body_value: Any) -> bool:
    if isinstance(body_value, bool):
        return header_value == ("true" if body_value else "false")
    if isinstance(body_value, int | float):
        # integers compare numerically (`42.0` equals `42`)
        try:
            return float(header_value) == float(body_value)
        except ValueError:
            return False
    if isinstance(body_value, str):
        return header_value == body_value
    return False  # objects, arrays and null are never mirrored into headers


def _mismatch(header: str, sent: str | None, expected: object) -> HeaderMismatch:
    if sent is None:
        return HeaderMismatch(f"Header mismatch: required header {header} is missing", data={"header": header})
    return HeaderMismatch(
        f"Header mismatch: {header} header value {sent!r} does not match body value {expected!r}",
        data={"header": header},
    )


def check_headers(headers: Mapping[str, str], env: Envelope, meta_version: Any) -> None:
    """Raise HeaderMismatch unless the mirrored headers agree with the body `env`."""
    version = headers.get("MCP-Protocol-Version")
    if version is None or (meta_version is not None and version != meta_version):
        raise _mismatch("MCP-Protocol-Version", version, meta_version)
    if env.kind is Kind.REQUEST and meta_version is None:
        raise _mismatch("MCP-Protocol-Version", version, None)
    method = headers.get("Mcp-Method")
    if method is None or decode_header_value("Mcp-Method", method) != env.method:
        raise _mismatch("Mcp-Method", method, env.method)
    if env.method in NAME_REQUIRED:
        name = headers.get("Mcp-Name")
        if name is None or decode_header_value("Mcp-Name", name) != env.target:
            raise _mismatch("Mcp-Name", name, env.target)
    arguments = env.params.get("arguments") if env.params is not None else None
    folded = {k.lower(): v for k, v in arguments.items()} if isinstance(arguments, dict) else {}
    for hname, hvalue in headers.items():
        lname = hname.lower()
        if not lname.startswith(PARAM_PREFIX):
            continue
        decoded = decode_header_value(hname, hvalue)
        arg = lname[len(PARAM_PREFIX) :]
        if arg in folded and folded[arg] is not None and not _same(decoded, folded[arg]):
            raise _mismatch(hname, hvalue, folded[arg])


def classify(ctx: RequestContext, eras: str) -> Era:
    """Decide the era of a parsed POST and enforce the route's `eras`; modern requests get their headers checked.

    The era changes nothing about sessions: a modern request that carries `Mcp-Session-Id` keeps it, so routing
    checks it against the session's binding like any other (clearing it here once let a caller that claimed
    2026-07-28 skip that check while the header still reached the upstream).
    """
    envs = ctx.envelopes
    env = envs[0] if len(envs) == 1 else None
    meta = env.meta if env is not None else None
    meta_version = meta.get(META_PROTOCOL_VERSION) if meta is not None else None
    if env is None or not (meta_version is not None or is_modern_version(ctx.protocol_version)):
        if eras == "modern":
            raise InvalidRequest(
                "this route serves MCP 2026-07-28 only: send params._meta protocolVersion",
                code=INVALID_PARAMS,
                reason="modern_only",
                data={"supported": [MODERN_VERSION]},
            )
        return "legacy"
    if eras == "legacy":
        raise InvalidRequest(
            "this route does not serve MCP 2026-07-28",
            code=UNSUPPORTED_PROTOCOL_VERSION,
            reason="unsupported_protocol_version",
            data={"supported": list(LEGACY_VERSIONS), "requested": meta_version or ctx.protocol_version},
        )
    if env.kind is Kind.RESPONSE:
        raise InvalidRequest("a 2026-07-28 POST carries a request or a notification", reason="bad_shape")
    check_headers(ctx.headers, env, meta_version)
    ctx.notes["era"] = "modern"
    return "modern"
