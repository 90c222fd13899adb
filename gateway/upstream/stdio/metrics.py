"""Metrics of stdio server processes. Labels are bounded: server names come from the policy, the rest are fixed sets.

Resident memory and CPU are read from /proc by a sampler every few seconds (in a thread, off the event loop), never
on a request.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class StdioMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.processes = Gauge(
            "mcp_gateway_stdio_processes",
            "stdio server processes running now",
            ["server"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.starts = Counter(
            "mcp_gateway_stdio_process_starts_total",
            "stdio server processes started (result: started, failed = could not be executed)",
            ["server", "result"],
            registry=registry,
        )
        self.crashes = Counter(
            "mcp_gateway_stdio_process_crashes_total",
            "stdio server processes that exited without the gateway stopping them",
            ["server"],
            registry=registry,
        )
        self.refused = Counter(
            "mcp_gateway_stdio_process_refused_total",
            "process starts refused by a cap (limit: server_processes, tenant_processes, key_processes) or by "
            "the restart backoff (limit: restart_backoff)",
            ["server", "limit"],
            registry=registry,
        )
        self.rss = Gauge(
            "mcp_gateway_stdio_process_resident_bytes",
            "resident memory of the server's running processes (sum, sampled from /proc)",
            ["server"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.cpu = Gauge(
            "mcp_gateway_stdio_process_cpu_seconds",
            "CPU time (user + system) used so far by the server's running processes (sum, sampled from /proc)",
            ["server"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.slow_clients = Counter(
            "mcp_gateway_stdio_slow_clients_total",
            "answer streams cut off because the client read slower than the server wrote (stdio.max_queued_bytes)",
            ["server"],
            registry=registry,
        )
        self.stderr_lines = Counter(
            "mcp_gateway_stdio_stderr_lines_total",
            "stderr lines of stdio server processes (result: logged, dropped over the rate)",
            ["server", "result"],
            registry=registry,
        )
