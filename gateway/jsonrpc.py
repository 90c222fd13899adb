"""Bounded parse of a JSON-RPC message envelope.

The gateway needs only the envelope (kind, id, method, tool name or resource uri) to route, authorize, limit and
audit; the original bytes are what gets forwarded, so nothing is re-serialized on the way through. The body is
already size-capped by the caller; orjson bounds nesting depth. Every malformed input becomes a `ParseError` or
`InvalidRequest` (never another exception), which the fuzz test in tests/unit checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from gateway.auth.scopes import READ_METHODS, WRITE_METHODS
from gateway.bounds import RPC_ID_MAX
from gateway.errors import InvalidRequest, ParseError

JsonRpcId = str | int | None

# Protocol versions that define JSON-RPC batches (arrays). Later versions removed them.
BATCH_VERSIONS = frozenset({"2025-03-26"})
MAX_BATCH = 100


class Kind(StrEnum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"


# the client-to-server MCP request methods (auth/scopes.py lists each with its scope)
REQUEST_METHODS = READ_METHODS | WRITE_METHODS

# Methods whose `params.name` names a tool/prompt, or whose `params.uri` names a resource.
_NAME_METHODS = frozenset({"tools/call", "prompts/get"})
_URI_METHODS = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})


@dataclass(slots=True)
class Envelope:
    kind: Kind
    id: JsonRpcId = None
    method: str | None = None
    # `params.name` of tools/call and prompts/get
    name: str | None = None
    # `params.uri` of resources/read|subscribe|unsubscribe
    uri: str | None = None
    params: dict[str, Any] | None = None
    # 2026-07-28 per-request metadata (`params._meta`), when present
    meta: dict[str, Any] | None = None
    # a response carries an error object
    is_error: bool = False

    @property
    def tool(self) -> str | None:
        return self.name if self.method == "tools/call" else None

    @property
    def target(self) -> str | None:
        """Tool/prompt name or resource uri: what `Mcp-Name` must equal in 2026-07-28."""
        return self.name if self.name is not None else self.uri


@dataclass(slots=True)
class Message:
    """A parsed POST body: one envelope or a 2025-03-26 batch of them."""

    envelopes: list[Envelope] = field(default_factory=list)
    is_batch: bool = False

    @property
    def first_id(self) -> JsonRpcId:
        for env in self.envelopes:
            if env.kind is Kind.REQUEST:
                return env.id
        return None

    @property
    def has_requests(self) -> bool:
        return any(e.kind is Kind.REQUEST for e in self.envelopes)


def _valid_id(value: Any) -> bool:
    # bool is an int subclass but not a valid JSON-RPC id
    return (isinstance(value, str | int) and not isinstance(value, bool)) or value is None


def parse_envelope(obj: Any) -> Envelope:
    if not isinstance(obj, dict):
        raise InvalidRequest("JSON-RPC message must be an object", reason="not_an_object")
    if obj.get("jsonrpc") != "2.0":
        raise InvalidRequest('JSON-RPC message must have "jsonrpc": "2.0"', reason="bad_jsonrpc_version")
    has_id = "id" in obj
    rpc_id = obj.get("id")
    if has_id and not _valid_id(rpc_id):
        raise InvalidRequest("JSON-RPC id must be a string or an integer", reason="bad_id")
    method = obj.get("method")
    if method is not None:
        if not isinstance(method, str) or not method:
            raise InvalidRequest("JSON-RPC method must be a non-empty string", reason="bad_method")
        params = obj.get("params")
        if params is not None and not isinstance(params, dict | list):
            raise InvalidRequest("JSON-RPC params must be an object or an array", reason="bad_params")
        pdict = params if isinstance(params, dict) else None
        if not has_id:
            if method in REQUEST_METHODS:
                # MCP requests must carry an id. Without one this is no notification either, and letting it through
                # would skip the checks only requests get (scope, tool rules) on its way to the upstream.
                raise InvalidRequest(f"{method} is a request and needs an id", reason="request_without_id")
            return Envelope(Kind.NOTIFICATION, None, method, params=pdict)
        if rpc_id is None:
            raise InvalidRequest("JSON-RPC request id must not be null", reason="bad_id")
        env = Envelope(Kind.REQUEST, rpc_id, method, params=pdict)
        if pdict is not None:
            meta = pdict.get("_meta")
            if isinstance(meta, dict):
                env.meta = meta
            if method in _NAME_METHODS:
                name = pdict.get("name")
                if not isinstance(name, str):
                    raise InvalidRequest(f"{method} needs params.name (a string)", reason="bad_params")
                env.name = name
            elif method in _URI_METHODS:
                uri = pdict.get("uri")
                if not isinstance(uri, str):
                    raise InvalidRequest(f"{method} needs params.uri (a string)", reason="bad_params")
                env.uri = uri
        elif method in _NAME_METHODS or method in _URI_METHODS:
            raise InvalidRequest(f"{method} needs params", reason="bad_params")
        return env
    has_result = "result" in obj
    has_error = "error" in obj
    if has_result == has_error:
        raise InvalidRequest("JSON-RPC message is neither a request nor a response", reason="bad_shape")
    if not has_id:
        raise InvalidRequest("JSON-RPC response needs an id", reason="bad_id")
    if has_error and not isinstance(obj["error"], dict):
        raise InvalidRequest("JSON-RPC error must be an object", reason="bad_shape")
    return Envelope(Kind.RESPONSE, rpc_id, is_error=has_error)


def parse_message(body: bytes, protocol_version: str | None = None) -> Message:
    """Parse a POST body. Arrays are accepted only where the negotiated version defines batches.

    `protocol_version` is the `MCP-Protocol-Version` header; when it is absent the spec says to assume
    2025-03-26, which allows batches.
    """
    if not body:
        raise ParseError("empty request body", reason="empty_body")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"request body is not valid JSON: {exc.msg}", reason="invalid_json") from None
    except RecursionError:  # pragma: no cover - orjson bounds depth itself
        raise ParseError("request body nests too deeply", reason="invalid_json") from None
    if isinstance(obj, list):
        version = protocol_version or "2025-03-26"
        if version not in BATCH_VERSIONS:
            raise InvalidRequest(
                f"JSON-RPC batches are not allowed in protocol version {version}", reason="batch_not_allowed"
            )
        if not obj:
            raise InvalidRequest("empty JSON-RPC batch", reason="empty_batch")
        if len(obj) > MAX_BATCH:
            raise InvalidRequest(f"JSON-RPC batch larger than {MAX_BATCH}", reason="batch_too_large")
        envs = [parse_envelope(item) for item in obj]
        if any(e.method == "initialize" for e in envs):
            raise InvalidRequest("initialize must not be part of a batch", reason="initialize_in_batch")
        return Message(envs, is_batch=True)
    return Message([parse_envelope(obj)])


def best_effort_id(body: bytes) -> JsonRpcId:
    """The request id to echo in an error for a body that failed validation, if one can be read (an overlong
    string id is kept with the refusal's audit record until it is written: it cannot be read, None)."""
    try:
        obj = orjson.loads(body)
    except Exception:
        return None
    if isinstance(obj, dict):
        rpc_id = obj.get("id")
        if _valid_id(rpc_id) and not (isinstance(rpc_id, str) and len(rpc_id) > RPC_ID_MAX):
            return rpc_id
    return None
