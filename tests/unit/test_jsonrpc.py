"""The JSON-RPC envelope parser: shapes, batches by protocol version, and fuzzing (only ParseError/InvalidRequest)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import PARSE_ERROR, InvalidRequest, ParseError, render_error
from gateway.jsonrpc import MAX_BATCH, Kind, best_effort_id, parse_message

pytestmark = pytest.mark.unit


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def req(method: str, rpc_id: Any = 1, **params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"jsonrpc": "2.0", "id": rpc_id, "method": method}
    if params:
        out["params"] = params
    return out


# ------------------------------------------------------------------------------------------------ shapes


def test_request_with_tool_name() -> None:
    msg = parse_message(body(req("tools/call", 7, name="add", arguments={"a": 1})))
    (env,) = msg.envelopes
    assert (env.kind, env.id, env.method, env.tool, env.target) == (Kind.REQUEST, 7, "tools/call", "add", "add")
    assert not msg.is_batch and msg.first_id == 7 and msg.has_requests


def test_prompt_name_is_a_target_but_not_a_tool() -> None:
    (env,) = parse_message(body(req("prompts/get", "p", name="review"))).envelopes
    assert env.name == "review" and env.tool is None and env.target == "review"


def test_resource_uri() -> None:
    (env,) = parse_message(body(req("resources/read", "r1", uri="example://greeting"))).envelopes
    assert env.uri == "example://greeting" and env.target == "example://greeting" and env.id == "r1"


def test_meta_is_kept() -> None:
    (env,) = parse_message(body(req("tools/list", 1, _meta={"progressToken": 5}))).envelopes
    assert env.meta == {"progressToken": 5}


def test_notification_has_no_id() -> None:
    msg = parse_message(body({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    (env,) = msg.envelopes
    assert env.kind is Kind.NOTIFICATION and env.id is None
    assert msg.first_id is None and not msg.has_requests


@pytest.mark.parametrize("method", ["tools/call", "tools/list", "initialize", "ping", "resources/read"])
def test_a_request_method_without_id_is_refused(method: str) -> None:
    # not a notification: forwarded as one, a tools/call would skip the scope and tool checks requests get
    with pytest.raises(InvalidRequest) as info:
        parse_message(body({"jsonrpc": "2.0", "method": method, "params": {"name": "x", "uri": "y"}}))
    assert info.value.reason == "request_without_id"


def test_custom_notifications_still_pass() -> None:
    # extension notifications are not MCP requests; the upstream decides what they mean
    (env,) = parse_message(body({"jsonrpc": "2.0", "method": "test/close", "params": {"code": 1}})).envelopes
    assert env.kind is Kind.NOTIFICATION and env.method == "test/close"


@pytest.mark.parametrize(
    ("obj", "is_error"),
    [
        ({"jsonrpc": "2.0", "id": 3, "result": {}}, False),
        ({"jsonrpc": "2.0", "id": "x", "error": {"code": 1, "message": "no"}}, True),
    ],
)
def test_responses(obj: dict[str, Any], is_error: bool) -> None:
    (env,) = parse_message(body(obj)).envelopes
    assert env.kind is Kind.RESPONSE and env.id == obj["id"] and env.is_error is is_error


@pytest.mark.parametrize(
    ("raw", "exc", "reason"),
    [
        (b"", ParseError, "empty_body"),
        (b"{not json", ParseError, "invalid_json"),
        (b'{"jsonrpc":"2.0","id":1,"method":"x"', ParseError, "invalid_json"),
        (b"\xff\xfe", ParseError, "invalid_json"),
        (b"NaN", ParseError, "invalid_json"),
        (b"42", InvalidRequest, "not_an_object"),
        (b'"hello"', InvalidRequest, "not_an_object"),
        (b"null", InvalidRequest, "not_an_object"),
        (b'{"id":1,"method":"ping"}', InvalidRequest, "bad_jsonrpc_version"),
        (b'{"jsonrpc":"1.0","id":1,"method":"ping"}', InvalidRequest, "bad_jsonrpc_version"),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', InvalidRequest, "bad_id"),
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', InvalidRequest, "bad_id"),
        (b'{"jsonrpc":"2.0","id":[1],"method":"ping"}', InvalidRequest, "bad_id"),
        (b'{"jsonrpc":"2.0","id":null,"method":"ping"}', InvalidRequest, "bad_id"),
        (b'{"jsonrpc":"2.0","id":1,"method":""}', InvalidRequest, "bad_method"),
        (b'{"jsonrpc":"2.0","id":1,"method":5}', InvalidRequest, "bad_method"),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}', InvalidRequest, "bad_params"),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call"}', InvalidRequest, "bad_params"),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":3}}', InvalidRequest, "bad_params"),
        (b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{}}', InvalidRequest, "bad_params"),
        (b'{"jsonrpc":"2.0","id":1}', InvalidRequest, "bad_shape"),
        (b'{"jsonrpc":"2.0","id":1,"result":1,"error":{}}', InvalidRequest, "bad_shape"),
        (b'{"jsonrpc":"2.0","id":1,"error":"boom"}', InvalidRequest, "bad_shape"),
        (b'{"jsonrpc":"2.0","result":1}', InvalidRequest, "bad_id"),
    ],
)
def test_malformed(raw: bytes, exc: type[Exception], reason: str) -> None:
    with pytest.raises(exc) as info:
        parse_message(raw)
    assert info.value.reason == reason  # type: ignore[attr-defined]


def test_deep_nesting_is_a_parse_error_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ParseError):
        parse_message(deep)


# ------------------------------------------------------------------------------------------------ batches


def test_batch_accepted_at_2025_03_26() -> None:
    items = [req("tools/list", 1), {"jsonrpc": "2.0", "method": "notifications/progress"}, req("ping", 2)]
    msg = parse_message(body(items), "2025-03-26")
    assert msg.is_batch and [e.kind for e in msg.envelopes] == [Kind.REQUEST, Kind.NOTIFICATION, Kind.REQUEST]
    assert msg.first_id == 1


def test_batch_without_version_header_means_2025_03_26() -> None:
    # the spec: a missing MCP-Protocol-Version header means 2025-03-26, which defines batches
    assert parse_message(body([req("ping", 1)])).is_batch


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25", "2026-07-28", "2024-11-05", "garbage"])
def test_batch_refused_at_other_versions(version: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_message(body([req("ping", 1)]), version)
    assert info.value.reason == "batch_not_allowed" and info.value.status == 400 and info.value.code == -32600


def test_initialize_in_a_batch_is_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_message(body([req("ping", 1), req("initialize", 2)]), "2025-03-26")
    assert info.value.reason == "initialize_in_batch"


def test_empty_and_oversized_batches() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_message(b"[]")
    assert info.value.reason == "empty_batch"
    with pytest.raises(InvalidRequest) as info:
        parse_message(body([req("ping", i) for i in range(MAX_BATCH + 1)]))
    assert info.value.reason == "batch_too_large"
    assert len(parse_message(body([req("ping", i) for i in range(MAX_BATCH)])).envelopes) == MAX_BATCH


def test_bad_element_in_a_batch() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_message(body([req("ping", 1), 5]))
    assert info.value.reason == "not_an_object"


def test_best_effort_id() -> None:
    assert best_effort_id(b'{"jsonrpc":"1.0","id":"abc","method":"x"}') == "abc"
    assert best_effort_id(b'{"id":9}') == 9
    assert best_effort_id(b'{"id":true}') is None
    assert best_effort_id(b'{"id":{"a":1}}') is None
    assert best_effort_id(b"[1,2]") is None
    assert best_effort_id(b"{broken") is None


# ------------------------------------------------------------------------------------------------ fuzzing

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=25,
)
# objects that look like JSON-RPC, so the fuzzer reaches the deeper branches
rpc_keys = st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error", "name", "uri"])
rpc_values = st.one_of(
    st.just("2.0"),
    st.sampled_from(["tools/call", "prompts/get", "resources/read", "initialize", "ping", "notifications/x"]),
    st.dictionaries(st.sampled_from(["name", "uri", "_meta", "arguments"]), json_values, max_size=3),
    json_values,
)
rpc_objects = st.dictionaries(rpc_keys, rpc_values, max_size=6)
versions = st.one_of(st.none(), st.sampled_from(["2025-03-26", "2025-06-18", "2026-07-28"]), st.text(max_size=12))


def check_never_crashes(raw: bytes, version: str | None) -> None:
    """The property: a Message, or a ParseError/InvalidRequest that renders as a well-formed JSON-RPC error."""
    try:
        msg = parse_message(raw, version)
    except (ParseError, InvalidRequest) as err:
        resp = render_error(err, best_effort_id(raw), request_id="fuzz")
        assert resp.status == 400
        assert resp.content_type == "application/json"
        assert resp.body is not None
        payload = orjson.loads(resp.body)  # type: ignore[arg-type]
        assert set(payload) == {"jsonrpc", "id", "error"} and payload["jsonrpc"] == "2.0"
        rid = payload["id"]
        assert rid is None or (isinstance(rid, str | int) and not isinstance(rid, bool))
        error = payload["error"]
        assert isinstance(error["code"], int) and error["code"] in (PARSE_ERROR, -32600)
        assert isinstance(error["message"], str) and error["message"]
        assert error["data"]["reason"] == err.reason
        return
    assert msg.envelopes
    for env in msg.envelopes:
        assert env.id is None or (isinstance(env.id, str | int) and not isinstance(env.id, bool))
        if env.kind is Kind.REQUEST:
            assert isinstance(env.method, str) and env.method and env.id is not None
        if env.method in ("tools/call", "prompts/get"):
            assert env.kind is not Kind.REQUEST or isinstance(env.name, str)
    if msg.is_batch:
        assert (version or "2025-03-26") == "2025-03-26"
        assert all(e.method != "initialize" for e in msg.envelopes)


@FUZZ
@given(raw=st.binary(max_size=300), version=versions)
def test_fuzz_arbitrary_bytes(raw: bytes, version: str | None) -> None:
    check_never_crashes(raw, version)


@FUZZ
@given(value=json_values, version=versions)
def test_fuzz_arbitrary_json_values(value: Any, version: str | None) -> None:
    check_never_crashes(json.dumps(value).encode(), version)


@FUZZ
@given(obj=st.one_of(rpc_objects, st.lists(rpc_objects, max_size=4)), version=versions)
def test_fuzz_jsonrpc_like_objects(obj: Any, version: str | None) -> None:
    check_never_crashes(json.dumps(obj).encode(), version)
