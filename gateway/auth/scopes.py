"""MCP method -> required scope (MCP-NOTES section 7). Unknown or extension methods need `admin`."""

from __future__ import annotations

READ_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "completion/complete",
        "logging/setLevel",
        "tasks/get",
        "tasks/result",
        "tasks/list",
        "server/discover",
        "subscriptions/listen",
    }
)
WRITE_METHODS = frozenset({"tools/call", "tasks/cancel"})


def required_scope(method: str) -> str:
    if method in READ_METHODS:
        return "read"
    if method in WRITE_METHODS:
        return "write"
    if method.startswith("notifications/"):
        # notifications concern the caller's own session; any authenticated caller may send them
        return "read"
    return "admin"


def scope_allows(scopes: frozenset[str], method: str) -> bool:
    need = required_scope(method)
    if "admin" in scopes:
        return True
    if need == "read":
        return "read" in scopes or "write" in scopes
    return need in scopes
