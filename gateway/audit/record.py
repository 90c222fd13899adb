"""The audit record: its fields, the cheap capture at the end of a request, and the full build in the writer.

Capture (`capture`) runs on the request path inside the chain's `finally`: it only copies references out of the
RequestContext into a slotted `AuditEvent`. Everything that costs something (sanitizing arguments, hashing the
session id, formatting times, computing the risk level) happens later in the writer task (`build_record`).
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway import bounds
from gateway.audit.sanitize import SanitizeLimits, clean_text, redact_identifier, redact_text, sanitize
from gateway.auth.scopes import required_scope
from gateway.policy.base import is_glob
from gateway.redact import display_url

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.settings import AuditRiskRules

# Column order of the record everywhere: JSONL keys, PostgreSQL columns, COPY rows, hash input.
FIELDS: tuple[str, ...] = (
    "id",
    "ts",
    "started_at",
    "request_id",
    "tenant",
    "principal",
    "key_id",
    "auth_method",
    "client_ip",
    "server",
    "upstream",
    "transport",
    "http_method",
    "session_hash",
    "rpc_method",
    "rpc_id",
    "tool",
    "resource_uri",
    "decision",
    "stage",
    "reason",
    "http_status",
    "rpc_error_code",
    "upstream_status",
    "latency_ms",
    "upstream_latency_ms",
    "bytes_in",
    "bytes_out",
    "risk",
    "shadow",
    "arguments",
    "notes",
    "writer_id",
    "seq",
    "prev_hash",
    "hash",
)
# The W3C trace and span id of the gateway's server span (gateway/tracing/), in the records of traced requests only
# (tracing on): a record without them hashes exactly as records did before they existed, so a chain written before
# and after tracing was turned on verifies as one. PostgreSQL keeps them in two nullable columns (migration 006),
# after the others; NULL there is "absent" in the record.
TRACE_FIELDS: tuple[str, ...] = ("trace_id", "span_id")
COLUMNS: tuple[str, ...] = FIELDS + TRACE_FIELDS
TIME_FIELDS = frozenset({"ts", "started_at"})
JSON_FIELDS = frozenset({"shadow", "arguments", "notes"})

RISK_ORDER = {"low": 0, "medium": 1, "high": 2, "critical": 3}
AUTH_STAGES = frozenset({"authn", "client_guard"})
FORWARD_STAGE = "forward"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# "YYYY-MM-DDTHH:MM:SS" by second: strftime is the costly part. A record's two times (ts, started_at) usually
# share a second but not always, and a one-entry cache thrashed between them; a record's two timestamps fall in the
# same few seconds as the records around it.
@functools.lru_cache(maxsize=64)
def _ts_secs(sec: int) -> str:
    return (EPOCH + timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%S")


def format_ts(us: int) -> str:
    """Microseconds since the epoch -> `2026-11-25T23:59:59.123456Z` (the canonical form the hash covers)."""
    sec, frac = divmod(us, 1_000_000)
    return f"{_ts_secs(sec)}.{frac:06d}Z"


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def ts_from_datetime(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class AuditEvent:
    """Raw facts about one finished operation, copied out of the RequestContext without any processing."""

    ts_us: int
    started_us: int
    request_id: str
    server: str
    transport: str
    http_method: str
    client_ip: str
    tenant: str | None = None
    principal: str | None = None
    key_id: str | None = None
    auth_method: str | None = None
    upstream: str | None = None
    session_id: str | None = None
    rpc_method: str | None = None
    rpc_id: Any = None
    tool: str | None = None
    resource_uri: str | None = None
    refused_stage: str | None = None
    refused_reason: str | None = None
    http_status: int | None = None
    rpc_error_code: int | None = None
    upstream_status: int | None = None
    latency_s: float | None = None
    upstream_latency_s: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    shadow: tuple[tuple[str, str], ...] = ()
    arguments: Any = None
    notes: dict[str, Any] | None = None
    admin: bool = False
    # the write-ahead journal's reference (gateway/audit/journal.py), acknowledged once the record is durable
    journal: int | None = None
    # the request's trace (gateway/tracing/): 32 and 16 lower-case hex digits, made or checked by the gateway
    trace_id: str | None = None
    span_id: str | None = None


def capture(ctx: RequestContext) -> AuditEvent:
    """Copy what the record needs out of `ctx`. Synchronous and allocation-light: it runs on the request path.

    Values a client chose (method, tool, uri, ids, route name) are bounded here (gateway/bounds.py), so a queued
    event never holds more than a few kilobytes whatever the request carried; the length checks cost nothing
    that allocates on the common path. A refused caller's arguments are not kept at all."""
    now_us = int(time.time() * 1_000_000)
    principal = ctx.principal
    envs = ctx.envelopes
    env = envs[0] if len(envs) == 1 else None
    server = ctx.server
    arguments = None
    if (
        env is not None
        and server is not None
        and server.audit_arguments
        and env.params is not None
        and principal is not None
    ):
        arguments = env.params.get("arguments") if env.method == "tools/call" else env.params
    shadow = ctx.shadow
    # Positional, in field order: keyword arguments cost ~0.8 us more per call on this path for 29 fields
    # (test_capture_fills_every_field_in_order guards the order).
    tenant: str | None = None
    subject: str | None = None
    key_id: str | None = None
    method: str | None = None
    if principal is not None:
        tenant, subject, key_id, method = principal.tenant, principal.subject, principal.key_id, principal.method
        if method == "jwt":  # claims of a verified token: signed, but of any length
            tenant, subject = bounds.bound_opt(tenant, bounds.SUBJECT_MAX), bounds.bound(subject, bounds.SUBJECT_MAX)
    rpc_method: str | None = None
    tool: str | None = None
    uri: str | None = None
    if env is not None:
        rpc_method, tool, uri = env.method, env.name, env.uri
        if rpc_method is not None and len(rpc_method) > bounds.METHOD_MAX:
            rpc_method = bounds.bound(rpc_method, bounds.METHOD_MAX)
        if tool is not None and len(tool) > bounds.NAME_MAX:
            tool = bounds.bound(tool, bounds.NAME_MAX)
        if uri is not None and len(uri) > bounds.URI_MAX:
            uri = bounds.bound(uri, bounds.URI_MAX)
    elif envs:
        rpc_method = "batch"
    server_name = ctx.server_name
    if len(server_name) > bounds.SERVER_MAX:
        server_name = bounds.bound(server_name, bounds.SERVER_MAX)
    session_id = ctx.session_id
    if session_id is not None and len(session_id) > bounds.SESSION_ID_MAX:
        session_id = bounds.bound_key(session_id)
    rpc_id = ctx.rpc_id
    if type(rpc_id) is str and len(rpc_id) > bounds.RPC_ID_MAX:
        rpc_id = bounds.bound(rpc_id, bounds.RPC_ID_MAX)
    ev = AuditEvent(
        now_us,  # ts_us
        int(ctx.started_wall * 1_000_000),  # started_us
        ctx.request_id,  # request_id
        server_name,  # server
        ctx.transport,  # transport
        ctx.http_method,  # http_method
        ctx.client_ip,  # client_ip
        tenant,  # tenant
        subject,  # principal
        key_id,  # key_id
        method,  # auth_method
        ctx.upstream_url,  # upstream
        session_id,  # session_id
        rpc_method,  # rpc_method
        rpc_id,  # rpc_id
        tool,  # tool
        uri,  # resource_uri
        ctx.refused_stage,  # refused_stage
        ctx.refused_reason,  # refused_reason
        ctx.http_status,  # http_status
        ctx.rpc_error_code,  # rpc_error_code
        ctx.upstream_status,  # upstream_status
        ctx.elapsed(),  # latency_s
        ctx.upstream_latency,  # upstream_latency_s
        ctx.bytes_in,  # bytes_in
        ctx.bytes_out,  # bytes_out
        tuple((s.stage, s.reason) for s in shadow) if shadow else (),  # shadow
        arguments,  # arguments
        ctx.notes or None,  # notes
    )
    trace = ctx.trace
    if trace is not None:
        ev.trace_id, ev.span_id = trace.trace_id, trace.span_id
    return ev


def decision_of(ev: AuditEvent) -> str:
    """allowed | refused (a chain stage said no) | error (the forward step failed) | cancelled (client left)."""
    if ev.http_status == 499:
        return "cancelled"
    if ev.refused_stage is None:
        return "allowed"
    return "error" if ev.refused_stage == FORWARD_STAGE else "refused"


def _max(a: str, b: str) -> str:
    return a if RISK_ORDER[a] >= RISK_ORDER[b] else b


class RiskRules:
    """Compiled `audit.risk` settings: the level is the highest among the rules that match."""

    def __init__(self, rules: AuditRiskRules) -> None:
        self._r = rules
        self._methods = dict(rules.methods)
        self._tool_exact = {k: v for k, v in rules.tools.items() if not is_glob(k)}
        self._tool_globs = [(k, v) for k, v in rules.tools.items() if is_glob(k)]
        # one client calling one tool repeats the same arguments record after record: one lookup instead of the
        # rule walk (and the glob matches), per instance (the rules are this instance's)
        self._level_of = functools.lru_cache(maxsize=_MEMO_MAX)(self._level)

    def level(self, ev: AuditEvent, decision: str, memo: bool = True) -> str:
        """`memo`: false for an unauthenticated caller, whose values must not take a place in the memo."""
        status = ev.upstream_status
        level_of = self._level_of if memo else self._level
        return level_of(
            ev.admin, ev.rpc_method, ev.tool, decision, ev.refused_stage, status is not None and status >= 500
        )

    def _level(
        self,
        admin: bool,
        method: str | None,
        tool: str | None,
        decision: str,
        refused_stage: str | None,
        upstream_5xx: bool,
    ) -> str:
        """The level from exactly the fields it depends on (so the memo above can never answer for another)."""
        r = self._r
        level: str = r.default
        if admin:
            level = _max(level, r.admin)
        if method is not None and method != "batch" and not method.startswith("notifications/"):
            scope = required_scope(method)
            if scope == "write":
                level = _max(level, r.write)
            elif scope == "admin":
                level = _max(level, r.admin)
            override = self._methods.get(method)
            if override is not None:
                level = _max(level, override)
        if tool is not None:
            exact = self._tool_exact.get(tool)
            if exact is not None:
                level = _max(level, exact)
            for pattern, lvl in self._tool_globs:
                if fnmatch.fnmatchcase(tool, pattern):
                    level = _max(level, lvl)
        if decision == "refused":
            level = _max(level, r.auth_failure if refused_stage in AUTH_STAGES else r.refused)
        elif decision == "error" or upstream_5xx:
            level = _max(level, r.upstream_error)
        return level


# Record ids are random UUIDs (version 4, exactly what `str(uuid.uuid4())` gives): drawn from os.urandom 256 at a
# time, since one urandom call and one UUID object per record cost ~2 us on the writer.
_ID_BATCH = 256
_id_pool: list[str] = []
# a forked child must never hand out the ids its parent may also use
os.register_at_fork(after_in_child=_id_pool.clear)
_VARIANT = {f"{n:x}": f"{(n & 3) | 8:x}" for n in range(16)}  # RFC 4122 variant bits (10xx)


def new_record_id() -> str:
    if not _id_pool:
        h = os.urandom(16 * _ID_BATCH).hex()
        _id_pool.extend(
            f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-{_VARIANT[h[i + 16]]}{h[i + 17 : i + 20]}-"
            f"{h[i + 20 : i + 32]}"
            for i in range(0, len(h), 32)
        )
    return _id_pool.pop()


# Deterministic per-value results worth remembering: a few sessions and upstream URLs recur in every batch.
# Bounded in count (least recently used out first) and in key length (capture() bounded every client value), and
# used only for authenticated callers (gateway/bounds.py): hostile values can cost a recomputation, never memory.
_MEMO_MAX = 4096


def _hash_session(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


hash_session = functools.lru_cache(maxsize=_MEMO_MAX)(_hash_session)


def _display_upstream(url: str) -> str:
    # upstream URLs may carry credentials in userinfo or query (tokens): never recorded (gateway/redact.py)
    return clean_text(display_url(url), 512)


# upstream URLs come from policy, or from an upstream's legacy `endpoint` event (not from the client); only URLs
# of ordinary length are remembered
_clean_upstream = functools.lru_cache(maxsize=_MEMO_MAX)(_display_upstream)


def _opt(text: str | None, max_len: int = 256) -> str | None:
    return None if text is None else clean_text(text, max_len)


_Who = tuple[str | None, str | None, str | None, str | None, str, str, str, str]
_What = tuple[str | None, str | None, str | None, str | None]
# The cleaned identity and operation fields of a record, by their raw values: one client calling one tool repeats
# the same values in record after record, and one lookup replaces a dozen cleanups. Bounded like the memos above.


def _who_fields(who: _Who) -> _Who:
    tenant, principal, key_id, auth_method, client_ip, server, transport, http_method = who
    return (
        _opt(tenant, bounds.SUBJECT_MAX),
        _opt(principal, bounds.SUBJECT_MAX),
        _opt(key_id, 128),
        _opt(auth_method, 32),
        clean_text(client_ip, 64),
        clean_text(server, bounds.SERVER_MAX),
        clean_text(transport, 32),
        clean_text(http_method, 16),
    )


def _what_fields(what: _What) -> _What:
    rpc_method, tool, stage, reason = what
    # the method and tool name are the client's: a credential pasted there is pattern-redacted like an argument
    return (
        _opt(_redact_opt(rpc_method), bounds.METHOD_MAX),
        _opt(_redact_opt(tool), bounds.NAME_MAX),
        _opt(stage, 64),
        _opt(reason, 128),
    )


def _redact_opt(value: str | None) -> str | None:
    # never memoized here: _whats memoizes the whole tuple for authenticated callers only
    return None if value is None else redact_identifier(value)


_whos = functools.lru_cache(maxsize=_MEMO_MAX)(_who_fields)
_whats = functools.lru_cache(maxsize=_MEMO_MAX)(_what_fields)


def build_record(ev: AuditEvent, ts_us: int, risk: RiskRules, limits: SanitizeLimits) -> dict[str, Any]:
    """The full record (without the chain fields, which the writer's HashChain adds)."""
    decision = decision_of(ev)
    rpc_id = ev.rpc_id
    who_raw = (
        ev.tenant,
        ev.principal,
        ev.key_id,
        ev.auth_method,
        ev.client_ip,
        ev.server,
        ev.transport,
        ev.http_method,
    )
    # an unauthenticated caller's values are cleaned afresh every time: they never take a memo's place
    memo = bounds.authenticated(ev.auth_method)
    what_raw = (ev.rpc_method, ev.tool, ev.refused_stage, ev.refused_reason)
    if memo:
        who, what = _whos(who_raw), _whats(what_raw)
    else:
        who, what = _who_fields(who_raw), _what_fields(what_raw)
    tenant, principal, key_id, auth_method, client_ip, server, transport, http_method = who
    rpc_method, tool, stage, reason = what
    rec: dict[str, Any] = {
        "id": new_record_id(),
        "ts": format_ts(ts_us),
        "started_at": format_ts(ev.started_us),
        # the client's X-Request-ID and JSON-RPC id are free text too: no credential survives in them
        "request_id": clean_text(redact_identifier(ev.request_id), bounds.RPC_ID_MAX),
        "tenant": tenant,
        "principal": principal,
        "key_id": key_id,
        "auth_method": auth_method,
        "client_ip": client_ip,
        "server": server,
        "upstream": None
        if ev.upstream is None
        else _clean_upstream(ev.upstream)
        if len(ev.upstream) <= bounds.MEMO_KEY_MAX * 4
        else _display_upstream(ev.upstream),
        "transport": transport,
        "http_method": http_method,
        "session_hash": None
        if ev.session_id is None
        else hash_session(ev.session_id)
        if memo
        else _hash_session(ev.session_id),
        "rpc_method": rpc_method,
        "rpc_id": None if rpc_id is None else clean_text(redact_identifier(str(rpc_id)), bounds.RPC_ID_MAX),
        "tool": tool,
        # a resource URI can carry a token in its query: pattern-redact it, not just bound it
        "resource_uri": None
        if ev.resource_uri is None
        else clean_text(redact_text(ev.resource_uri, remember=memo), bounds.URI_MAX),
        "decision": decision,
        "stage": stage,
        "reason": reason,
        "http_status": ev.http_status,
        "rpc_error_code": ev.rpc_error_code,
        "upstream_status": ev.upstream_status,
        "latency_ms": None if ev.latency_s is None else round(ev.latency_s * 1000.0, 3),
        "upstream_latency_ms": None if ev.upstream_latency_s is None else round(ev.upstream_latency_s * 1000.0, 3),
        "bytes_in": ev.bytes_in,
        "bytes_out": ev.bytes_out,
        "risk": risk.level(ev, decision, memo),
        "shadow": [{"stage": s, "reason": r} for s, r in ev.shadow] if ev.shadow else None,
        "arguments": None if ev.arguments is None else sanitize(ev.arguments, limits, remember=memo),
        "notes": None if not ev.notes else sanitize(ev.notes, limits, remember=memo),
    }
    if ev.trace_id is not None:
        rec["trace_id"] = ev.trace_id
        rec["span_id"] = ev.span_id
    return rec
