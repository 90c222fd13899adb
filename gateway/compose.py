"""The composition root: `build_gateway(settings)` builds every component once, in the order below, and returns
them in one frozen `Gateway`; `build_chain` turns a policy snapshot into the filter chain from those components.

Each package has a typed factory that returns its component and a `Lifecycle` (gateway/lifecycle.py); nothing is
looked up by name or patched after it is built. gateway/app.py stores the Gateway under one AppKey (`GATEWAY`) and
wires the routes.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.audit.factory import audit_readiness, build_audit
from gateway.audit.pipeline import AuditPipeline
from gateway.auth.factory import build_auth
from gateway.auth.state import AuthState
from gateway.chain import STAGES, Chain, Filter, Observer
from gateway.clientip import ClientIpResolver
from gateway.filters import authn, authz, breaker, client_guard, ratelimit
from gateway.hosts import HostPolicy
from gateway.lifecycle import Lifecycle
from gateway.logging import AccessLog
from gateway.metrics import GatewayMetrics
from gateway.oauth.factory import OAuthService, build_oauth
from gateway.policy.snapshot import Snapshot
from gateway.policy.store import PolicyStore, ReloadResult
from gateway.probes import ReadinessCheck
from gateway.ratelimit.factory import build_limiter
from gateway.ratelimit.service import RateLimiter
from gateway.ratelimit.strikes import StrikeObserver
from gateway.redis_client import RedisHolder, build_redis, redis_readiness
from gateway.resilience.factory import build_resilience
from gateway.resilience.registry import BreakerRegistry
from gateway.sessions import SessionStore
from gateway.settings import Settings
from gateway.tracing.factory import build_tracing
from gateway.tracing.spans import Tracing
from gateway.transports.common import ContextFactory
from gateway.transports.factory import TransportState, build_transports
from gateway.upstream.balancer import Balancer
from gateway.upstream.choice import UpstreamChoice
from gateway.upstream.credentials import UpstreamCredentials
from gateway.upstream.health import HealthMonitor
from gateway.upstream.pool import UpstreamPools
from gateway.upstream.resilient import ResilientForwarder
from gateway.upstream.stdio.factory import StdioUpstreams, build_stdio


@dataclass(frozen=True, slots=True)
class Gateway:
    """Every long-lived component of one gateway; two gateways can live in one process (tests do)."""

    settings: Settings
    metrics: GatewayMetrics
    redis: RedisHolder
    pools: UpstreamPools
    transports: TransportState
    sessions: SessionStore
    auth: AuthState
    limiter: RateLimiter
    breakers: BreakerRegistry
    health: HealthMonitor
    balancer: Balancer
    # the one step that chooses a request's upstream instance (gateway/upstream/choice.py)
    choice: UpstreamChoice
    forwarder: ResilientForwarder
    # `transport: stdio` routes: their processes and forward step (gateway/upstream/stdio/)
    stdio: StdioUpstreams
    audit: AuditPipeline
    # the client address behind trusted proxies (gateway/clientip.py)
    client_ip: ClientIpResolver
    # Host / Origin checks (DNS rebinding), gateway/hosts.py
    hosts: HostPolicy
    # the gateway's own credential for each upstream server (never the client's)
    credentials: UpstreamCredentials
    # every request's RequestContext (client address; linked to its answer for the audit journal)
    new_context: ContextFactory
    # the built-in OAuth authorization server (gateway/oauth/); None when off
    oauth: OAuthService | None
    # chain observers, in the order they see a finished request
    observers: tuple[Observer, ...]
    # /readyz: name -> (check, required)
    readiness: dict[str, tuple[ReadinessCheck, bool]]
    policy: PolicyStore
    # started in this order with the app, stopped in reverse
    lifecycles: tuple[Lifecycle, ...]
    # OpenTelemetry spans (gateway/tracing/); None when `tracing.enabled` is false
    tracing: Tracing | None = None


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)


def build_gateway(settings: Settings) -> Gateway:
    metrics = GatewayMetrics(created_series=settings.metrics.created_series, runtime_collectors=True)
    registry = metrics.registry
    # the policy store first: the limiter and the health feed read the active snapshot (None until it is loaded),
    # and its chain builder is only called at startup, when every component below exists
    store = PolicyStore(
        settings.path(settings.policies_dir),
        lambda snapshot: build_chain(snapshot, gateway),
        lambda result, snapshot: _policy_loaded(metrics, result, snapshot),
    )
    redis, redis_life = build_redis(settings)
    pools = UpstreamPools()
    transports, transport_lives = build_transports(settings, registry, redis)
    auth, auth_life = build_auth(settings, registry)
    oauth, oauth_life = build_oauth(
        settings, auth.oauth_tokens, auth.hmac_secret, auth.key_store, store.current_snapshot
    )
    limiter, limiter_life = build_limiter(registry, redis, store.current_snapshot)
    credentials = UpstreamCredentials()
    stdio, stdio_life = build_stdio(registry)
    resilience, resilience_life = build_resilience(
        settings,
        registry,
        redis,
        pools,
        credentials,
        transports.sessions,
        store.current_snapshot,
        probes={"stdio": stdio.probe},
    )
    audit, audit_life = build_audit(settings, registry)
    tracing, tracing_life = build_tracing(settings.tracing, settings.path("."))
    client_ip = ClientIpResolver(settings.http.trusted_proxies)
    # the audit journal wants each answer's context (gateway/audit/answers.py)
    new_context = ContextFactory(client_ip, link_answers=audit.journal is not None)
    observers: list[Observer] = [StrikeObserver(limiter), audit, metrics]
    if tracing is not None:
        # first: it ends the request's span and gives a request refused before the chain ran its trace ids,
        # which the audit record and the access log then carry
        observers.insert(0, tracing)
    if settings.logging.access_log:
        observers.append(AccessLog())
    readiness: dict[str, tuple[ReadinessCheck, bool]] = {}
    # neither is required: without Redis the gateway serves from in-process stores, without PostgreSQL the audit
    # records wait in the spool (degraded, still serving)
    for name, check in (("redis", redis_readiness(redis)), ("postgres", audit_readiness(settings, audit))):
        if check is not None:
            readiness[name] = (check, False)
    gateway = Gateway(
        settings=settings,
        metrics=metrics,
        redis=redis,
        pools=pools,
        transports=transports,
        sessions=transports.sessions,
        auth=auth,
        limiter=limiter,
        breakers=resilience.breakers,
        health=resilience.health,
        balancer=resilience.balancer,
        choice=resilience.choice,
        forwarder=resilience.forwarder,
        stdio=stdio,
        audit=audit,
        client_ip=client_ip,
        hosts=HostPolicy.from_settings(settings),
        credentials=credentials,
        new_context=new_context,
        oauth=oauth,
        observers=tuple(observers),
        readiness=readiness,
        policy=store,
        tracing=tracing,
        lifecycles=(
            # stopped last: spans of the requests drained before are exported
            tracing_life,
            redis_life,
            *transport_lives,
            auth_life,
            oauth_life,
            limiter_life,
            resilience_life,
            audit_life,
            Lifecycle("upstream pools", stop=pools.close),
            # stopped first: its processes end before anything they might still report to
            stdio_life,
        ),
    )
    return gateway


def _policy_loaded(metrics: GatewayMetrics, result: ReloadResult, snapshot: Snapshot) -> None:
    metrics.policy_loaded(result.ok, snapshot.version)


def build_chain(snapshot: Snapshot, gw: Gateway) -> Chain:
    """Build every filter from the compiled snapshot, in the fixed order (gateway/chain.py). Called once per
    reload, never per request; each filter is handed only the components it uses."""
    # stdio processes of a server that left the policy (or whose `stdio` block changed) end
    gw.stdio.manager.sync(snapshot)
    filters: tuple[Filter, ...] = (
        client_guard.build(snapshot, gw.limiter),
        authn.build(snapshot, gw.auth),
        authz.build(snapshot, gw.auth),
        ratelimit.build(snapshot, gw.limiter, gw.choice),
        breaker.build(snapshot, gw.breakers, gw.health, gw.choice),
    )
    for flt, expected in zip(filters, STAGES, strict=True):
        # a real check, not `assert`: the order is a security property and must hold under `python -O` too
        if flt.stage != expected:
            raise RuntimeError(f"chain order broken: {flt.stage} where {expected} belongs")
    return Chain(snapshot, filters, gw.observers, gw.tracing)
