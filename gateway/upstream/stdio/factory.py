"""Factory of the stdio upstreams: the process manager, the forward step of `transport: stdio` routes, the health
probe of shared processes and their metrics. Wired by gateway/compose.py."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from gateway.lifecycle import Lifecycle
from gateway.upstream.stdio.forwarder import StdioForwarder
from gateway.upstream.stdio.health import StdioProbe
from gateway.upstream.stdio.manager import StdioManager
from gateway.upstream.stdio.metrics import StdioMetrics


@dataclass(frozen=True, slots=True)
class StdioUpstreams:
    manager: StdioManager
    forwarder: StdioForwarder
    probe: StdioProbe


def build_stdio(registry: CollectorRegistry) -> tuple[StdioUpstreams, Lifecycle]:
    manager = StdioManager(StdioMetrics(registry))
    # stopped after the server stopped taking requests: every process gets SIGTERM, then SIGKILL, and is reaped
    return (
        StdioUpstreams(manager, StdioForwarder(manager), StdioProbe(manager)),
        Lifecycle("stdio upstreams", manager.start, manager.stop),
    )
