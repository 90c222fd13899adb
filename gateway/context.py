"""RequestContext: everything one request (or one WebSocket message) carries through the chain.

Built once at entry with the snapshot read once, so a reload never changes a request midway. Filters write their
decisions here; audit and metrics read it in the chain's `finally`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.jsonrpc import Envelope, JsonRpcId, Message

if TYPE_CHECKING:
    from gateway.auth.principal import Principal
    from gateway.policy.servers import ServerPolicy
    from gateway.policy.snapshot import Snapshot
    from gateway.responder import AnyRequest
    from gateway.tracing.spans import RequestTrace

# The chain's stage names, in order (gateway/chain.py explains each position). They live beside the context, not
# beside the chain, because metrics, routing and audit name stages without depending on how the chain is built.
STAGES: tuple[str, ...] = ("client_guard", "authn", "authz", "ratelimit", "breaker")
CONNECT_STAGES: tuple[str, ...] = ("client_guard", "authn", "authz")
MESSAGE_STAGES: tuple[str, ...] = ("authz", "ratelimit", "breaker")
FORWARD_STAGE = "forward"
# session refusals (unknown or foreign session id, session caps): after the stages, before anything is forwarded
SESSION_STAGE = "session"


@dataclass(frozen=True, slots=True)
class UpstreamOutcome:
    """What the forward stage learned about the upstream: for breakers, health and metrics."""

    upstream: str
    status: int | None  # HTTP status, None when no answer came
    # "connect", "timeout", "reset", "protocol", or None; "pool" when the gateway's own connection cap was hit
    # (nothing was sent and the upstream did nothing wrong: breakers ignore it)
    error: str | None
    latency: float  # seconds to the answer's headers (or to the failure)


@dataclass(slots=True)
class ShadowDecision:
    """A rule in `mode: shadow` that would have refused: logged, audited and counted, not enforced."""

    stage: str
    reason: str


@dataclass(slots=True)
class RequestContext:
    request_id: str
    snapshot: Snapshot
    server_name: str
    server: ServerPolicy | None
    client_ip: str
    # "streamable-http", "sse", "websocket"
    transport: str
    # HTTP verb, or "WS" for a WebSocket message
    http_method: str
    request: AnyRequest | None = None
    headers: Any = None  # the client's request headers (CIMultiDictProxy)
    body: bytes = b""
    message: Message | None = None
    protocol_version: str | None = None
    session_id: str | None = None
    principal: Principal | None = None
    # the upstream instance chosen by routing (URL); set by the forward stage or the session binding
    upstream_url: str | None = None
    # the session's SessionBinding once looked up (routing caches it: one store round trip per request)
    session_binding: Any = None
    # a session lookup started early (SessionStore.prefetch) so it shares a Redis round trip; finished by routing
    session_prefetch: Any = None
    started: float = field(default_factory=time.perf_counter)
    started_wall: float = field(default_factory=time.time)
    # headers filters want on the final answer (rate-limit headers, ...)
    response_headers: dict[str, str] = field(default_factory=dict)
    # outcome, filled as the request goes
    refused_stage: str | None = None
    refused_reason: str | None = None
    http_status: int | None = None
    rpc_error_code: int | None = None
    upstream_status: int | None = None
    upstream_latency: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    shadow: list[ShadowDecision] = field(default_factory=list)
    # the audit journal's reference of this request (gateway/audit/journal.py), taken by its answer or its record
    audit_ref: int | None = None
    # cost charged against rate limits (set by the ratelimit stage)
    cost: int = 0
    # cleanups to run when the request ends (release concurrency slots, ...); run in reverse order
    releases: list[Any] = field(default_factory=list)
    # free-form per-stage notes for audit (e.g. the limit that was hit)
    notes: dict[str, Any] = field(default_factory=dict)
    # called once with the upstream outcome (the breaker stage registers here)
    outcome_hooks: list[Callable[[UpstreamOutcome], None]] = field(default_factory=list)
    # rewrites JSON-RPC messages coming back from the upstream (e.g. filtering tools/list); None = relay bytes
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # this request's spans (gateway/tracing/spans.py); None whenever tracing is off: the one check on every path
    trace: RequestTrace | None = None

    def report_outcome(self, outcome: UpstreamOutcome) -> None:
        hooks, self.outcome_hooks = self.outcome_hooks, []
        for hook in hooks:
            hook(outcome)

    @property
    def envelopes(self) -> list[Envelope]:
        return self.message.envelopes if self.message is not None else []

    @property
    def rpc_id(self) -> JsonRpcId:
        return self.message.first_id if self.message is not None else None

    @property
    def method(self) -> str | None:
        envs = self.envelopes
        if not envs:
            return None
        return envs[0].method if len(envs) == 1 else "batch"

    @property
    def tool(self) -> str | None:
        envs = self.envelopes
        return envs[0].tool if len(envs) == 1 else None

    @property
    def tenant(self) -> str | None:
        return self.principal.tenant if self.principal is not None else None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
