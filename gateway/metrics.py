"""Prometheus metrics, on a registry owned by the app (no process-global singletons).

Labels are bounded: server names come from policy, MCP methods from a fixed list (anything else is "other"),
statuses are HTTP codes, workers are indexes below `workers`. Never a
user id, key id or session id. Label children are cached so the request path does a dict lookup, not
prometheus-client's label resolution.

With `workers: N > 1` the supervisor points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers start:
every value then lives in a per-process memory-mapped file and `/metrics` (whichever worker answers) merges them
with `MultiProcessCollector`, so counters are totals over all workers. Each gauge declares how its per-worker
values combine (`multiprocess_mode`); values computed at scrape time (`set_function`, samplers, custom
collectors) are copied into the shared files periodically, because a scrape served by one worker cannot call into
the others.

The standard process, platform and GC collectors (`process_*`, `python_info`, `python_gc_*`) are on the registry
too; with workers their gauges show each live worker by `pid` and their counters are totals over all workers, like
every other scrape-time value. prometheus-client's `_created` series (a counter's creation time) are left out
unless `metrics.created_series` asks for them: they double the series count and nothing here reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway.auth.scopes import READ_METHODS, WRITE_METHODS
from gateway.context import CONNECT_STAGES, FORWARD_STAGE, MESSAGE_STAGES, SESSION_STAGE, STAGES, RequestContext
from gateway.loophold import background
from gateway.pacing import Slice
from gateway.toolnames import ToolLabels
from gateway.version import PYTHON_VERSION, VERSION

log = structlog.get_logger("gateway.metrics")

KNOWN_METHODS = frozenset(READ_METHODS | WRITE_METHODS | {"batch", "notification", "response", "stream", "delete"})
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# set by the worker supervisor for each worker process (gateway/net/workers.py)
WORKER_INDEX_ENV = "MGW_WORKER_INDEX"
# how often scrape-time values (sessions, pools, connections, function gauges) are written to the shared files
SAMPLE_INTERVAL_SECONDS = 2.0

Sampler = Callable[[], Awaitable[None] | None]
# called just before a scrape is rendered; what it returns, just after (e.g. to reset a per-scrape maximum)
ScrapeHook = Callable[[], Callable[[], None]]


def method_label(ctx: RequestContext) -> str:
    if ctx.http_method == "GET":
        return "stream"
    if ctx.http_method == "DELETE":
        return "delete"
    envs = ctx.envelopes
    if not envs:
        return "none"
    if len(envs) > 1:
        return "batch"
    env = envs[0]
    if env.method is None:
        return "response"
    if env.method.startswith("notifications/"):
        return "notification"
    return env.method if env.method in KNOWN_METHODS else "other"


def multiprocess_dir() -> str | None:
    """The shared metrics directory when this process is one of several workers, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


def worker_index() -> int:
    try:
        return int(os.environ.get(WORKER_INDEX_ENV, "0"))
    except ValueError:
        return 0


class GatewayMetrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        worker: int | None = None,
        *,
        created_series: bool = False,
        runtime_collectors: bool = False,
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.worker = worker_index() if worker is None else worker
        self._multiproc_dir = multiprocess_dir()
        self._created_series = created_series
        r = self.registry
        if runtime_collectors:
            # the library's own instances sit on its global registry; these are this registry's
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.requests = Counter(
            "mcp_gateway_requests_total",
            "Requests handled, by server, MCP method and HTTP status",
            ["server", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "mcp_gateway_request_duration_seconds",
            "Gateway time per request, from arrival to the end of the answer (streams included)",
            ["server", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "mcp_gateway_upstream_duration_seconds",
            "Upstream time to the answer's headers",
            ["server"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "mcp_gateway_in_flight_requests",
            "Requests being handled now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.decisions = Counter(
            "mcp_gateway_decisions_total",
            "Chain decisions by stage: allowed (let through, shadow refusals included), refused, or shadow_refused "
            "(would refuse, mode: shadow)",
            ["stage", "decision", "reason"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "mcp_gateway_policy_reloads_total", "Policy reloads by result", ["result"], registry=r
        )
        self.policy_reload_failed = Gauge(
            "mcp_gateway_policy_last_reload_failed",
            "1 if the last policy reload failed (in any worker)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.policy_info = Gauge(
            "mcp_gateway_policy_snapshot_info",
            "The active policy snapshot (value 1; two versions at 1 means workers disagree, e.g. mid-reload)",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info = Gauge(
            "mcp_gateway_build_info",
            "The gateway's version and Python version (value 1)",
            ["version", "python"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info.labels(VERSION, PYTHON_VERSION).set(1)
        self.worker_requests = Counter(
            "mcp_gateway_worker_requests_total",
            "Requests handled per worker process (index 0..workers-1): shows how the kernel spreads connections",
            ["worker"],
            registry=r,
        )
        self.sessions_open = Gauge(
            "mcp_gateway_sessions_open",
            "Session bindings (Mcp-Session-Id, legacy SSE) held by this gateway's processes",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.streams_open = Gauge(
            "mcp_gateway_streams_open",
            "Long-lived responses open now, by kind: sse (GET event streams, legacy SSE included), listen (2026 "
            "subscriptions/listen), websocket",
            ["kind"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_open = Gauge(
            "mcp_gateway_client_connections_open",
            "Client TCP connections open now (keep-alive, streams and WebSockets included)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.tool_requests = Counter(
            "mcp_gateway_tool_requests_total",
            "tools/call requests by server and tool (a tool the policy names, else _other)",
            ["server", "tool"],
            registry=r,
        )
        self.tool_refusals = Counter(
            "mcp_gateway_tool_refusals_total",
            "tools/call requests refused, by server, tool (a tool the policy names, else _other), stage and reason",
            ["server", "tool", "stage", "reason"],
            registry=r,
        )
        self._tool_labels = ToolLabels()
        self._tool_children: dict[tuple[str, str], Any] = {}
        self.lean_handovers = Counter(
            "mcp_gateway_lean_handovers_total",
            "Client connections the lean HTTP server (http.fast_path) gave to aiohttp's server: a request that was "
            "not a plain POST or GET /mcp/{server} (DELETE, WebSocket, admin, chunked or oversized bodies)",
            registry=r,
        )
        self._req_children: dict[tuple[str, str, str], Any] = {}
        self._lat_children: dict[tuple[str, str], Any] = {}
        self._up_children: dict[str, Any] = {}
        self._allowed_cache: dict[tuple[tuple[str, ...], int], tuple[Any, ...]] = {}
        self._worker_child = self.worker_requests.labels(str(self.worker))
        # In one process every value is read through `render()`, which `refresh()`es first: the request path only
        # tallies in plain dicts and `flush()` hands the sums to prometheus-client, instead of a dozen locked
        # increments per request. With workers (multiprocess files) a scrape may be served by another process,
        # which cannot flush this one's tallies, so there every increment goes to the shared file at once.
        self._deferred = self._multiproc_dir is None
        self._tally: dict[Any, int] = {}  # counter children (or tuples of them) -> increments not yet applied
        self._tally_hist: dict[Any, _PendingObservations] = {}  # histogram children -> observations not yet applied
        self._in_flight = 0
        if self._deferred:
            self.in_flight.set_function(lambda: self._in_flight)
        self._policy_version: str | None = None
        self._samplers: list[Sampler] = []
        self._scrape_hooks: list[ScrapeHook] = []
        # multiprocess mode: copies of scrape-time collectors' gauges (see _mirror_collectors)
        self._mirror_registry = CollectorRegistry(auto_describe=False)
        self._mirrors: dict[str, tuple[Gauge, tuple[str, ...]]] = {}
        self._mirror_skipped: set[str] = set()
        self._counter_mirrors: dict[str, tuple[Counter, tuple[str, ...]]] = {}
        self._counter_seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    @property
    def multiprocess(self) -> bool:
        return self._multiproc_dir is not None

    def request_started(self) -> None:
        """`in_flight.inc()`, by the transports for every request they handle."""
        if self._deferred:
            self._in_flight += 1
        else:
            self.in_flight.inc()

    def request_finished(self) -> None:
        if self._deferred:
            self._in_flight -= 1
        else:
            self.in_flight.dec()

    def observe(self, ctx: RequestContext) -> None:
        server = ctx.server_name if ctx.server is not None else "_unknown"
        method = method_label(ctx)
        status = str(ctx.http_status or 0)
        key = (server, method, status)
        child = self._req_children.get(key)
        if child is None:
            child = self._req_children[key] = self.requests.labels(server, method, status)
        lkey = (server, method)
        lat = self._lat_children.get(lkey)
        if lat is None:
            lat = self._lat_children[lkey] = self.latency.labels(server, method)
        up = None
        up_latency = ctx.upstream_latency
        if up_latency is not None:
            up = self._up_children.get(server)
            if up is None:
                up = self._up_children[server] = self.upstream_latency.labels(server)
        allowed = self._allowed_children(ctx)
        envs = ctx.envelopes
        if envs and (len(envs) > 1 or envs[0].method == "tools/call"):
            self._observe_tools(ctx, server)
        if self._deferred:
            tally = self._tally
            tally[child] = tally.get(child, 0) + 1
            tally[self._worker_child] = tally.get(self._worker_child, 0) + 1
            if allowed:
                tally[allowed] = tally.get(allowed, 0) + 1
            self._pending_observation(lat, ctx.elapsed())
            if up is not None and up_latency is not None:
                self._pending_observation(up, up_latency)
        else:
            child.inc()
            self._worker_child.inc()
            lat.observe(ctx.elapsed())
            if up is not None:
                up.observe(up_latency)
            for stage in allowed:
                stage.inc()
        if ctx.refused_stage is not None and ctx.refused_reason is not None and ctx.http_status != 499:
            self.decisions.labels(ctx.refused_stage, "refused", ctx.refused_reason).inc()
        for shadow in ctx.shadow:
            self.decisions.labels(shadow.stage, "shadow_refused", shadow.reason).inc()

    def _observe_tools(self, ctx: RequestContext, server: str) -> None:
        """The per-tool counters of each `tools/call` in the request (a refusal refuses every message in it)."""
        refused = ctx.refused_stage is not None and ctx.refused_reason is not None and ctx.http_status != 499
        for env in ctx.envelopes:
            tool = env.tool
            if tool is None:
                continue
            label = self._tool_labels.label(ctx.snapshot, tool)
            key = (server, label)
            child = self._tool_children.get(key)
            if child is None:
                child = self._tool_children[key] = self.tool_requests.labels(server, label)
            if self._deferred:
                self._tally[child] = self._tally.get(child, 0) + 1
            else:
                child.inc()
            if refused:
                self.tool_refusals.labels(server, label, ctx.refused_stage, ctx.refused_reason).inc()

    def _pending_observation(self, child: Any, amount: float) -> None:
        pending = self._tally_hist.get(child)
        if pending is None:
            pending = self._tally_hist[child] = _PendingObservations(child)
        pending.add(amount)

    def flush(self) -> None:
        """Apply what the request path tallied (deferred mode); `refresh()` runs it before every scrape."""
        tally, self._tally = self._tally, {}
        for target, n in tally.items():
            if type(target) is tuple:
                for child in target:
                    child.inc(n)
            else:
                target.inc(n)
        for pending in self._tally_hist.values():
            pending.apply()

    def _allowed_children(self, ctx: RequestContext) -> tuple[Any, ...]:
        """The `allowed` counters of the stages this request got through (shadow refusals included)."""
        if ctx.http_method == "WS":
            stages = MESSAGE_STAGES  # one WebSocket message: the per-message stages
        elif ctx.transport == "websocket":
            stages = CONNECT_STAGES  # the upgrade: the per-connection stages
        else:
            stages = STAGES
        refused = ctx.refused_stage
        if refused is None or refused == FORWARD_STAGE:
            cut = len(stages)
        elif refused in stages:
            cut = stages.index(refused)
        elif refused == SESSION_STAGE:
            cut = len(stages) - 1 if stages[-1] == "breaker" else len(stages)  # refused where routing resolves
        elif refused == "parse" and stages[0] == "client_guard":
            cut = 1  # the body is parsed right after the client guard
        else:
            cut = 0  # refused before the chain (unknown route, bad Origin, ...)
        key = (stages, cut)
        children = self._allowed_cache.get(key)
        if children is None:
            children = self._allowed_cache[key] = tuple(
                self.decisions.labels(stage, "allowed", "") for stage in stages[:cut]
            )
        return children

    def policy_loaded(self, ok: bool, version: str) -> None:
        self.policy_reloads.labels("ok" if ok else "failed").inc()
        self.policy_reload_failed.set(0 if ok else 1)
        if version != self._policy_version:
            if self._policy_version is not None:
                # in multiprocess mode `remove` leaves the value in the shared file: zero it first
                self.policy_info.labels(self._policy_version).set(0)
                self.policy_info.remove(self._policy_version)
            self.policy_info.labels(version).set(1)
            self._policy_version = version

    # ------------------------------------------------------------------ scrape-time values

    def add_sampler(self, sampler: Sampler) -> None:
        """A callable that sets gauges from live state; run before every scrape and every few seconds."""
        self._samplers.append(sampler)

    def add_scrape_hook(self, hook: ScrapeHook) -> None:
        self._scrape_hooks.append(hook)

    def scrape_started(self) -> list[Callable[[], None]]:
        return [hook() for hook in self._scrape_hooks]

    async def refresh(self) -> None:
        self.flush()
        for sampler in self._samplers:
            try:
                result = sampler()
                if result is not None:
                    await result
            except Exception:  # a broken sampler must not break the scrape
                log.exception("metrics sampler failed")
        if self.multiprocess:
            self._copy_function_gauges()
            self._mirror_collectors()

    def _copy_function_gauges(self) -> None:
        # Gauges other modules back with `set_function` are computed at collect time, which MultiProcessCollector
        # never does (it reads files only). Writing their current value into the file makes them visible from
        # any worker. prometheus-client has no public API to enumerate collectors or function gauges.
        collectors = list(getattr(self.registry, "_collector_to_names", {}))
        for collector in collectors:
            if not isinstance(collector, Gauge):
                continue
            children = [collector, *getattr(collector, "_metrics", {}).values()]
            for gauge in children:
                fn = vars(gauge).get("_child_samples")
                if fn is None:
                    continue
                try:
                    samples = list(fn())
                except Exception:
                    log.exception("function gauge failed", metric=collector._name)
                    continue
                if samples:
                    gauge._value.set(samples[0].value)

    def _mirror_collectors(self) -> None:
        # Custom collectors (breaker states, upstream health, pools) compute gauge families at collect time and
        # have no files either. Each family is mirrored into a multiprocess gauge in "liveall" mode: /metrics
        # then shows every live worker's view, labelled by pid (aggregate with max/sum by the other labels).
        collectors = list(getattr(self.registry, "_collector_to_names", {}))
        for collector in collectors:
            if isinstance(collector, MetricWrapperBase):
                continue
            try:
                families = list(collector.collect())
            except Exception:
                log.exception("collector failed", collector=type(collector).__name__)
                continue
            for family in families:
                if family.type == "counter":
                    self._mirror_counter(family)
                    continue
                if family.type != "gauge":
                    if family.name not in self._mirror_skipped:
                        self._mirror_skipped.add(family.name)
                        log.warning("scrape-time metric not shared across workers", metric=family.name)
                    continue
                for sample in family.samples:
                    names = tuple(sorted(sample.labels))
                    entry = self._mirrors.get(family.name)
                    if entry is None:
                        gauge = Gauge(
                            family.name,
                            family.documentation,
                            names,
                            registry=self._mirror_registry,
                            multiprocess_mode="liveall",
                        )
                        entry = self._mirrors[family.name] = (gauge, names)
                    gauge, expected = entry
                    if names != expected:
                        continue
                    (gauge.labels(**sample.labels) if names else gauge).set(sample.value)

    def _mirror_counter(self, family: Metric) -> None:
        # A scrape-time counter (process CPU seconds, GC collections) becomes a multiprocess counter advanced by
        # what it gained since the last sample: /metrics then shows the total over every worker that ever ran, as
        # for the gateway's own counters. A value that went down (a collector reset) adds nothing.
        total = family.name + "_total"
        for sample in family.samples:
            if sample.name != total:
                continue
            names = tuple(sorted(sample.labels))
            entry = self._counter_mirrors.get(family.name)
            if entry is None:
                counter = Counter(family.name, family.documentation, names, registry=self._mirror_registry)
                entry = self._counter_mirrors[family.name] = (counter, names)
            counter, expected = entry
            if names != expected:
                continue
            key = (family.name, tuple(sorted(sample.labels.items())))
            gained = sample.value - self._counter_seen.get(key, 0.0)
            self._counter_seen[key] = sample.value
            if gained > 0:
                (counter.labels(**sample.labels) if names else counter).inc(gained)

    async def sample_forever(self, interval: float = SAMPLE_INTERVAL_SECONDS) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(interval)

    async def render_paced(self) -> bytes:
        """`render()` of one process, a metric family at a time in time slices: formatting every series in one go
        held the event loop ~1 ms for the bench's 200 series, and a registry grows with servers and tenants."""
        self.flush()
        out: list[bytes] = []
        slice_ = Slice()
        for family in self.registry.collect():
            out.append(generate_latest(_Families(self._shown(family))))
            if slice_.spent():
                await slice_.next()
        return b"".join(out)

    def render(self) -> bytes:
        if self._multiproc_dir is not None:
            merged = CollectorRegistry()
            MultiProcessCollector(merged, path=self._multiproc_dir)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        self.flush()
        return generate_latest(_Families(*(self._shown(f) for f in self.registry.collect())))

    def _shown(self, family: Metric) -> Metric:
        """`family` without its `_created` samples, unless they were asked for (`metrics.created_series`)."""
        if self._created_series:
            return family
        created = family.name + "_created"
        if not any(s.name == created for s in family.samples):
            return family
        shown = Metric(family.name, family.documentation, family.type, family.unit)
        shown.samples = [s for s in family.samples if s.name != created]
        return shown


class _Families(Collector):
    """Already collected metric families, for `generate_latest` (which formats what a collector yields)."""

    def __init__(self, *families: Metric) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class _PendingObservations:
    """Observations of one histogram child not yet applied: per-bucket counts and their sum, exactly what
    `Histogram.observe` adds for each (the first bucket whose upper bound is >= the amount, and the amount)."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        # prometheus-client keeps a child's bounds and values in these attributes; it has no public API to add
        # several observations at once
        self.bounds: list[float] = list(child._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def add(self, amount: float) -> None:
        if not math.isnan(amount):  # NaN matches no bucket in Histogram.observe (and bisect would say the first)
            self.counts[bisect_left(self.bounds, amount)] += 1
        self.total += amount

    def apply(self) -> None:
        counts = self.counts
        if not any(counts) and not self.total:
            return
        child = self.child
        child._sum.inc(self.total)
        buckets = child._buckets
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
                counts[i] = 0
        self.total = 0.0


METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics", GatewayMetrics)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    await metrics.refresh()
    finished = metrics.scrape_started()
    # merging the workers' files is file I/O: keep it off the event loop
    body = await asyncio.to_thread(metrics.render) if metrics.multiprocess else await metrics.render_paced()
    for done in finished:
        done()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def sampler_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: keeps scrape-time gauges fresh in the shared files while the app runs."""
    task = asyncio.create_task(background(app[METRICS].sample_forever(), "metrics-sampler"), name="metrics-sampler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
