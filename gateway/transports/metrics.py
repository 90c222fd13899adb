"""Transport metrics (legacy SSE streams, WebSocket connections and messages, session order, session store health).

Labels are bounded: server names come from policy, directions and ops are fixed sets.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class TransportMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.legacy_streams = Gauge(
            "mcp_gateway_legacy_sse_streams",
            "Legacy HTTP+SSE (2024-11-05) event streams open now",
            ["server"],
            registry=registry,
        )
        self.legacy_injected_errors = Counter(
            "mcp_gateway_legacy_sse_injected_errors_total",
            "Refusals of legacy HTTP+SSE POSTs also delivered as a `message` event on the session's stream",
            ["server"],
            registry=registry,
        )
        self.legacy_endpoint_refused = Counter(
            "mcp_gateway_legacy_sse_endpoint_refused_total",
            "Legacy HTTP+SSE streams closed because the upstream named a message endpoint off its own origin",
            ["server"],
            registry=registry,
        )
        self.ws_connections = Gauge(
            "mcp_gateway_websocket_connections",
            "WebSocket client connections open now (each with its own upstream socket)",
            ["server"],
            registry=registry,
        )
        self.ws_messages = Counter(
            "mcp_gateway_websocket_messages_total",
            "WebSocket text frames relayed, by direction (in: client to upstream, out: upstream to client) "
            "and result (relayed or refused)",
            ["server", "direction", "result"],
            registry=registry,
        )
        self.first_get_waits = Counter(
            "mcp_gateway_session_order_first_get_waits_total",
            "First request POSTs of a session that reached the gateway before the session's expected GET stream and "
            "waited for it, by result (arrived: the GET came, and the POST then waited for it to be open upstream; "
            "timeout: it did not come within 250 ms, the POST went on)",
            ["result"],
            registry=registry,
        )
        self.session_store_errors = Counter(
            "mcp_gateway_session_store_errors_total",
            "Redis session-store operations that failed and fell back to this replica's local bindings",
            ["op"],
            registry=registry,
        )
