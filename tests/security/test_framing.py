"""Request framing and smuggling against a real gateway process, on both of its HTTP/1.1 front doors: the lean
server (`gateway/net/h1server.py`, `http.fast_path: true`) and aiohttp's server alone (`http.fast_path: false`).

Each attack is written byte for byte on a raw socket, followed on the same connection by a complete, valid request
(the probe). Every attack carries, where a desynchronised parser would read it as a request of its own, a second
request (`X-Smuggled: yes`, JSON-RPC id `"smuggled"`, with a valid credential, so nothing but framing stands in its
way). For each attack the test asserts:

- the gateway's first answer, well-formed (one status line, clean header lines, exactly one framing), with the
  expected status (and JSON-RPC code and `data.reason` where the gateway itself answers, plus its audit record);
- after that answer either the connection closes, or the next answer is the probe's: never a second answer to the
  attack's bytes, never an answer with id `"smuggled"`;
- the upstream (a recording one) never receives a request carrying `X-Smuggled`;
- the gateway still serves a fresh connection (no crash).

Where another change is in flight on an answer (unknown routes, Host validation), the test asserts the invariant
(a 4xx refusal, nothing forwarded) rather than today's exact status.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.test_identity_helpers import audit_record
from tests.harness import Gateway, running, start_gateway
from tests.security.support import (
    RecordingUpstream,
    closed,
    http_request,
    raw_connection,
    read_one,
    start_recording_upstream,
)

pytestmark = pytest.mark.e2e

INVALID_REQUEST = -32600
PARSE_ERROR = -32700
PROTOCOL = "2025-06-18"


def initialize(rpc_id: str) -> bytes:
    params = {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "attacker", "version": "1"}}
    return json.dumps({"jsonrpc": "2.0", "id": rpc_id, "method": "initialize", "params": params}).encode()


@dataclass
class Env:
    gw: Gateway
    upstream: RecordingUpstream
    front: str  # "lean" or "aiohttp"

    @property
    def port(self) -> int:
        return self.gw.port

    def auth(self, key_id: str = "user") -> tuple[str, str]:
        return ("Authorization", f"Bearer {self.gw.keys[key_id]}")

    def smuggled(self) -> bytes:
        """The request an attacker hopes a confused parser serves on its own: complete, authorized, marked."""
        return http_request(self.port, initialize("smuggled"), headers=[self.auth(), ("X-Smuggled", "yes")])

    def probe(self, rid: str) -> bytes:
        return http_request(self.port, initialize("probe"), headers=[self.auth(), ("X-Request-ID", rid)])

    def head(
        self, *extra: str, key: str = "user", line: str = "POST /mcp/example HTTP/1.1", eol: str = "\r\n"
    ) -> bytes:
        """A request head authorized by `key`, without any body framing; `extra` lines are appended verbatim."""
        lines = [line, f"Host: 127.0.0.1:{self.port}", "Content-Type: application/json"]
        lines += ["Accept: application/json, text/event-stream", f"Authorization: Bearer {self.gw.keys[key]}", *extra]
        return (eol.join(lines) + eol + eol).encode("latin-1")


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data)


@dataclass(frozen=True)
class Attack:
    build: Callable[[Env, str], bytes]  # (env, request id) -> the bytes of the attack
    status: frozenset[int]  # the first answer's status: one value where it is settled, the invariant's set otherwise
    reason: str | None = None  # `data.reason` of the gateway's JSON-RPC answer, when it answers itself
    # True: the connection ends after the answer (the attack's bytes are never read on); False: it may stay open, and
    # then the only further answer is the probe's
    closes: bool = True


def refused_head(build: Callable[[Env, str], bytes]) -> Attack:
    """A head or framing no HTTP/1.1 server may serve: 400 from the parser, and the connection closes."""
    return Attack(build, frozenset({400}))


def _cl(value: str, name: str = "Content-Length") -> Callable[[Env, str], bytes]:
    """The only framing header is `name: value` (`{n}`: the body's real length); the smuggled request follows."""

    def build(env: Env, rid: str) -> bytes:
        body = initialize("attack")
        return env.head(f"X-Request-ID: {rid}", f"{name}: {value.format(n=len(body))}") + body + env.smuggled()

    return build


def _te_with_cl(te_line: str) -> Callable[[Env, str], bytes]:
    """Transfer-Encoding and Content-Length together, the CL covering the chunked body and the smuggled request."""

    def build(env: Env, rid: str) -> bytes:
        body = chunked(initialize("attack")) + env.smuggled()
        return env.head(f"X-Request-ID: {rid}", te_line, f"Content-Length: {len(body)}") + body

    return build


def _te_alone(te_line: str) -> Callable[[Env, str], bytes]:
    """Transfer-Encoding alone; the chunk's data is the smuggled request, which is only ever a body."""

    def build(env: Env, rid: str) -> bytes:
        return env.head(f"X-Request-ID: {rid}", te_line) + chunked(env.smuggled())

    return build


def _with_header(*lines: str) -> Callable[[Env, str], bytes]:
    def build(env: Env, rid: str) -> bytes:
        body = initialize("attack")
        return env.head(f"X-Request-ID: {rid}", *lines, f"Content-Length: {len(body)}") + body + env.smuggled()

    return build


def _cl_te(env: Env, rid: str) -> bytes:
    # CL.TE: the Content-Length covers the whole rest; chunked framing ends at once and leaves the smuggled request
    body = b"0\r\n\r\n" + env.smuggled()
    return env.head(f"X-Request-ID: {rid}", "Transfer-Encoding: chunked", f"Content-Length: {len(body)}") + body


def _te_cl(env: Env, rid: str) -> bytes:
    # TE.CL: a short Content-Length ends inside the first chunk, whose data is the smuggled request
    body = chunked(env.smuggled())
    return env.head(f"X-Request-ID: {rid}", "Transfer-Encoding: chunked", "Content-Length: 4") + body


def _two_lengths(first: str) -> Callable[[Env, str], bytes]:
    def build(env: Env, rid: str) -> bytes:
        body = initialize("attack")
        lengths = (first.format(n=len(body)), f"Content-Length: {len(body)}")
        return env.head(f"X-Request-ID: {rid}", *lengths) + body + env.smuggled()

    return build


def _chunk_size_overflow(env: Env, rid: str) -> bytes:
    body = initialize("attack")
    chunks = b"1" + b"0" * 16 + b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)  # 2**64 + len: wraps a 64-bit size
    return env.head(f"X-Request-ID: {rid}", "Transfer-Encoding: chunked") + chunks + env.smuggled()


def _chunk_extension_bare_lf(env: Env, rid: str) -> bytes:
    body = initialize("attack")
    chunks = b"%x;ext\n%b\r\n0\r\n\r\n" % (len(body), body)
    return env.head(f"X-Request-ID: {rid}", "Transfer-Encoding: chunked") + chunks + env.smuggled()


def _bare_lf(env: Env, rid: str) -> bytes:
    body = initialize("attack")
    return env.head(f"X-Request-ID: {rid}", f"Content-Length: {len(body)}", eol="\n") + body + env.smuggled()


def _request_line(line: str, method_body: bool = True) -> Callable[[Env, str], bytes]:
    def build(env: Env, rid: str) -> bytes:
        body = initialize("attack") if method_body else b""
        return env.head(f"X-Request-ID: {rid}", f"Content-Length: {len(body)}", line=line) + body

    return build


def _operator_line(line: str) -> Callable[[Env, str], bytes]:
    """A request line that would reach the admin API if the path were normalised, with an operator's key (so
    reaching it would succeed: only the refusal shows the path was not resolved)."""

    def build(env: Env, rid: str) -> bytes:
        op = env.gw.keys["operator"]
        lines = [line, f"Host: 127.0.0.1:{env.port}", f"Authorization: Bearer {op}", f"X-Request-ID: {rid}"]
        return ("\r\n".join([*lines, "Content-Length: 0"]) + "\r\n\r\n").encode()

    return build


def _hidden_in_body(env: Env, rid: str) -> bytes:
    body = env.smuggled()
    return env.head(f"X-Request-ID: {rid}", f"Content-Length: {len(body)}") + body


BAD_JSON = Attack(_hidden_in_body, frozenset({400}), reason="invalid_json", closes=False)
NOT_ROUTED = frozenset({400, 401, 403, 404})  # unknown-route answers are being reworked (issue 14, finding 8)

ATTACKS: dict[str, Attack] = {
    # Content-Length and Transfer-Encoding together (RFC 9112 6.1: reject, or TE alone and close)
    "cl_te_desync": refused_head(_cl_te),
    "te_cl_desync": refused_head(_te_cl),
    # Content-Length: duplicated, or not a plain decimal
    "two_equal_content_lengths": refused_head(_two_lengths("Content-Length: {n}")),
    "two_different_content_lengths": refused_head(_two_lengths("Content-Length: 0")),
    "content_length_with_plus_sign": refused_head(_cl("+{n}")),
    "content_length_with_minus_sign": refused_head(_cl("-{n}")),
    "content_length_with_inner_space": refused_head(_cl("{n} 0")),
    "content_length_in_hex": refused_head(_cl("0x{n:x}")),
    "content_length_as_list": refused_head(_cl("{n}, {n}")),
    # Transfer-Encoding obfuscations next to a Content-Length: every one refused
    "te_chunked_identity_with_cl": refused_head(_te_with_cl("Transfer-Encoding: chunked, identity")),
    "te_leading_space_with_cl": refused_head(_te_with_cl("Transfer-Encoding:  chunked")),
    "te_capitalised_with_cl": refused_head(_te_with_cl("Transfer-Encoding: Chunked")),
    "te_xchunked_with_cl": refused_head(_te_with_cl("Transfer-Encoding: xchunked")),
    "te_space_before_colon_with_cl": refused_head(_te_with_cl("Transfer-Encoding : chunked")),
    "te_twice_with_cl": refused_head(_te_with_cl("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity")),
    # ... and alone: a coding that is not finally `chunked` is refused; spellings RFC 9112 reads as chunked
    # (case-insensitive, OWS) are decoded as chunked, so the chunk's data stays a body and is refused as JSON
    "te_chunked_identity_alone": refused_head(_te_alone("Transfer-Encoding: chunked, identity")),
    "te_xchunked_alone": refused_head(_te_alone("Transfer-Encoding: xchunked")),
    "te_space_before_colon_alone": refused_head(_te_alone("Transfer-Encoding : chunked")),
    "te_leading_space_alone": Attack(_te_alone("Transfer-Encoding:  chunked"), BAD_JSON.status, "invalid_json", False),
    "te_capitalised_alone": Attack(_te_alone("Transfer-Encoding: Chunked"), BAD_JSON.status, "invalid_json", False),
    "te_identity_then_chunked_alone": Attack(
        _te_alone("Transfer-Encoding: identity, chunked"), BAD_JSON.status, "invalid_json", False
    ),
    # chunked bodies
    "chunk_size_overflow": refused_head(_chunk_size_overflow),
    "chunk_extension_bare_lf": refused_head(_chunk_extension_bare_lf),
    # the head itself
    "bare_lf_line_endings": refused_head(_bare_lf),
    "bare_cr_in_header": refused_head(_with_header("X-A: b\rX-Smuggled: yes")),
    "space_before_colon_content_length": refused_head(_cl("{n}", name="Content-Length ")),
    "nul_in_header_value": refused_head(_with_header("X-A: a\x00b")),
    "control_byte_in_header_value": refused_head(_with_header("X-A: a\x01b")),
    "del_in_header_value": refused_head(_with_header("X-A: a\x7fb")),
    "obs_fold": refused_head(_with_header("X-A: a\r\n folded")),
    "obs_fold_hiding_transfer_encoding": refused_head(_with_header("X-A: a\r\n Transfer-Encoding: chunked")),
    # the request line
    "absolute_form_target": Attack(
        lambda env, rid: _request_line(f"POST http://127.0.0.1:{env.port}/mcp/example HTTP/1.1")(env, rid),
        frozenset({200}),
        closes=False,
    ),
    # never an open proxy: served here or refused (Host validation is being added: issue 14, finding 5)
    "absolute_form_foreign_host": Attack(
        _request_line("POST http://evil.example/mcp/example HTTP/1.1"), frozenset({200, 400, 421}), closes=False
    ),
    "dot_segments_between_routes": Attack(_request_line("POST /mcp/../mcp/example HTTP/1.1"), NOT_ROUTED, closes=False),
    "dot_segments_to_admin_reload": Attack(
        _operator_line("POST /mcp/example/../../admin/reload HTTP/1.1"), NOT_ROUTED, closes=False
    ),
    "encoded_dot_segments_to_admin_reload": Attack(
        _operator_line("POST /mcp/%2e%2e/admin/reload HTTP/1.1"), NOT_ROUTED, closes=False
    ),
    # (aiohttp's plain 405 for a method no route takes is being made a JSON-RPC answer: issue 14, finding 9)
    "dot_segments_to_admin_keys": Attack(
        _operator_line("GET /mcp/example/../../admin/keys HTTP/1.1"), NOT_ROUTED | {405}, closes=False
    ),
    # a complete request inside a Content-Length body is a body, never a request
    "request_hidden_in_body": BAD_JSON,
}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordingUpstream]:
    up = start_recording_upstream(tmp_path_factory.mktemp("framing-up"), json_response=True)
    with running(up):
        yield up


@pytest.fixture(scope="module", params=["lean", "aiohttp"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: RecordingUpstream) -> Any:
    front: str = request.param
    policies: dict[str, Any] = {
        "servers.yaml": {
            "servers": {"example": {"upstreams": [{"url": upstream.url}], "owner": "acme", "shared_with": ["globex"]}}
        },
        "tenants.yaml": {"tenants": {"acme": {"servers": ["example"]}, "globex": {"servers": []}}},
        "keys.yaml": {"keys": []},
        # the IP blocker would block 127.0.0.1 after a table of refusals; it is not what these tests are about
        "limits.yaml": {"ddos": {"enabled": False}, "tiers": {}},
        "access.yaml": {"rules": []},
    }
    gw = start_gateway(
        tmp_path_factory.mktemp(f"framing-{front}"),
        policies,
        keys={
            "user": {"tenant": "acme", "scopes": ["read", "write"]},
            "operator": {"tenant": "acme", "scopes": ["read", "write", "admin"], "role": "operator"},
            "intruder": {"tenant": "globex", "scopes": ["read"]},
        },
        config={"http": {"fast_path": front == "lean"}},
    )
    with running(gw):
        yield Env(gw, upstream, front)


async def _gateway_alive(env: Env) -> None:
    async with raw_connection(env.port) as (reader, writer):
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{env.port}\r\n\r\n".encode())
        await writer.drain()
        answer = await read_one(reader)
    assert answer is not None and answer.status == 200, answer


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_framing_attack_is_refused_without_smuggling(env: Env, name: str) -> None:
    attack = ATTACKS[name]
    rid, probe_rid = uuid.uuid4().hex, uuid.uuid4().hex
    mark = env.upstream.mark()
    async with raw_connection(env.port) as (reader, writer):
        writer.write(attack.build(env, rid) + env.probe(probe_rid))
        await writer.drain()
        first = await read_one(reader)
        assert first is not None, f"{name}: the connection closed without an answer"
        answers = [first]
        if attack.closes:
            assert await closed(reader), f"{name}: the connection stayed open after the refusal"
        else:
            nxt = await read_one(reader)
            if nxt is not None:
                answers.append(nxt)
                # the only answer that may follow is the probe's: the attack's bytes produced exactly one answer
                assert nxt.is_json and nxt.json().get("id") == "probe", (name, nxt.status, nxt.body[:300])
    for answer in answers:
        assert b'"smuggled"' not in answer.body, f"{name}: the smuggled request was answered"
    assert first.status in attack.status, (name, env.front, first.status, first.body[:300])

    malformed = first.is_json and first.status == 400 and first.json()["error"]["data"]["reason"] == "malformed_request"
    if malformed:
        # the HTTP parser refused the head: the gateway answers it as JSON and audits it under an id of its own (the
        # client's X-Request-ID is in a head nobody could parse); nothing of it may have gone upstream (below)
        gen = first.headers.get("X-Request-ID", "")
        assert re.fullmatch(r"[0-9a-f]{32}", gen) and gen != rid, first.headers
        assert first.json()["error"]["code"] == INVALID_REQUEST, first.json()
        rec = await audit_record(env.gw.workdir / "audit.jsonl", gen)
        assert (rec["http_status"], rec["reason"]) == (400, "malformed_request"), rec
    elif first.is_json:
        # the gateway answered itself: a JSON-RPC message of its own, echoing the request id, and audited
        msg = first.json()
        assert first.headers.get("X-Request-ID") == rid, first.headers
        if first.status >= 400:
            assert isinstance(msg["error"]["code"], int) and msg["error"]["data"]["reason"], msg
            if attack.reason is not None:
                assert (msg["error"]["code"], msg["error"]["data"]["reason"]) == (PARSE_ERROR, attack.reason), msg
        else:
            assert msg["id"] == "attack" and "result" in msg, msg
        rec = await audit_record(env.gw.workdir / "audit.jsonl", rid)
        assert rec["http_status"] == first.status, rec
    else:
        # every refusal is the gateway's JSON answer now (the parser's too): a plain-text one is a regression
        raise AssertionError(f"{name}: a non-JSON answer {first.status}: {first.body[:200]!r}")

    seen = env.upstream.requests_since(mark)
    assert not [r for r in seen if "x-smuggled" in r["headers"]], (name, json.dumps(seen)[:2000])
    # exactly what was answered went upstream: the attack if it was served, and the probe if it was answered
    # (the gateway's own health checks reach the upstream meanwhile, with request ids of their own)
    ours = [r["headers"].get("x-request-id") for r in seen if r["headers"].get("x-request-id") in (rid, probe_rid)]
    assert ours == [rid] * (first.status < 400) + [probe_rid] * (len(answers) == 2), (name, seen)
    if name == "absolute_form_foreign_host" and first.status == 200:
        assert seen and seen[0]["path"] == "/mcp", seen  # served by the route's own upstream: not an open proxy
    await _gateway_alive(env)


async def test_probe_alone_is_served(env: Env) -> None:
    """The control: the probe every attack is followed by is served on both front doors, so an attack whose probe
    goes unanswered was refused by the gateway, not by a broken probe."""
    rid = uuid.uuid4().hex
    mark = env.upstream.mark()
    async with raw_connection(env.port) as (reader, writer):
        writer.write(env.probe(rid))
        await writer.drain()
        answer = await read_one(reader)
    assert answer is not None and answer.status == 200, answer
    assert answer.json()["id"] == "probe"
    seen = [r for r in env.upstream.requests_since(mark) if r["headers"].get("x-request-id") == rid]
    assert len(seen) == 1 and "authorization" not in seen[0]["headers"], seen


async def test_trailer_field_never_becomes_a_header_of_the_next_request(env: Env) -> None:
    """aiohttp's C parser keeps the last trailer field of a chunked request pending and adds it to the headers of
    the NEXT request on the connection. A trailer `Authorization` would then authenticate another client's request
    behind a front proxy that reuses connections. The gateway closes every connection after a request with a
    Transfer-Encoding body (gateway/framing.py), so no later request is parsed by that parser: the victim's request
    is never served on it, and on a new connection it runs as the victim."""
    body = initialize("attacker")
    trailer = "Authorization: Bearer " + env.gw.keys["intruder"]
    attacker_rid = uuid.uuid4().hex
    attacker = env.head(f"X-Request-ID: {attacker_rid}", "Transfer-Encoding: chunked", key="intruder")
    attacker += b"%x\r\n%b\r\n0\r\n%b\r\n\r\n" % (len(body), body, trailer.encode())
    victim_rid = uuid.uuid4().hex
    victim = http_request(
        env.port, initialize("victim"), headers=[("X-API-Key", env.gw.keys["user"]), ("X-Request-ID", victim_rid)]
    )
    async with raw_connection(env.port) as (reader, writer):
        # what a front proxy that reuses its connection to the gateway sends: one client's request, then another's
        writer.write(attacker + victim)
        await writer.drain()
        first, second = await read_one(reader), await read_one(reader)
    assert first is not None and first.status == 200 and first.json()["id"] == "attacker", first
    assert first.headers.get("connection", "").lower() == "close", first.headers
    assert second is None, second  # never parsed on the poisoned connection
    audit = env.gw.workdir / "audit.jsonl"
    assert (await audit_record(audit, attacker_rid))["key_id"] == "intruder"
    # the proxy sends it again on a new connection, as it must after Connection: close
    async with raw_connection(env.port) as (reader, writer):
        writer.write(victim)
        await writer.drain()
        again = await read_one(reader)
    assert again is not None and again.status == 200 and again.json()["id"] == "victim", again
    rec = await audit_record(audit, victim_rid)
    assert (rec["tenant"], rec["key_id"]) == ("acme", "user"), f"the victim's request ran as {rec['key_id']}"
    records = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    assert sum(1 for r in records if r.get("request_id") == victim_rid) == 1
