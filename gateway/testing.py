"""Builders for tests: compiled policy snapshots, request contexts, principals, a settable clock, and the settings
of an in-process gateway on a temporary policy directory.

Unit tests of a filter or of routing need a `Snapshot` and a `RequestContext` that look like the real ones; these
builders make them from the same models and compilers the gateway uses (nothing here is a fake of gateway logic),
with defaults that keep a test to the fields it is about. The in-process layer (`inprocess_settings` plus
`build_app`, see tests/conftest.py `gateway_client`) sits between unit tests and the subprocess end-to-end tests of
tests/harness.py: the whole app and chain on aiohttp's test server, without a process to start.

Imports only the gateway and its runtime dependencies, so it can live in the package (no pytest here).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml

from gateway.auth.principal import Principal
from gateway.context import RequestContext
from gateway.jsonrpc import parse_message
from gateway.policy.model import PolicySet
from gateway.policy.servers import ServerPolicy
from gateway.policy.snapshot import Snapshot
from gateway.settings import Settings

# an address nothing listens on: a route whose upstream must never be reached
UNREACHABLE_UPSTREAM = "http://127.0.0.1:9/mcp"
# the policy files a gateway reads, by the PolicySet field each one fills
POLICY_FILES = {
    "servers": "servers.yaml",
    "tenants": "tenants.yaml",
    "keys": "keys.yaml",
    "limits": "limits.yaml",
    "access": "access.yaml",
}


def policy_documents(
    servers: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    tenants: Mapping[str, Mapping[str, Any]] | None = None,
    keys: list[Mapping[str, Any]] | None = None,
    limits: Mapping[str, Any] | None = None,
    access: list[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The five policy documents, keyed as PolicySet's fields. Default: one server `example` owned by `acme`."""
    if servers is None:
        servers = {"example": {"upstreams": [{"url": UNREACHABLE_UPSTREAM}], "owner": "acme"}}
    return {
        "servers": {"servers": dict(servers)},
        "tenants": {"tenants": dict(tenants if tenants is not None else {"acme": {}})},
        "keys": {"keys": list(keys or [])},
        "limits": dict(limits or {}),
        "access": {"rules": list(access or [])},
    }


def snapshot(
    servers: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    version: str = "test",
    source_dir: Path = Path("."),
    **documents: Any,
) -> Snapshot:
    """A compiled snapshot of these policies (see `policy_documents` for the arguments)."""
    policy = PolicySet.model_validate(policy_documents(servers, **documents))
    return Snapshot.build(policy, version, source_dir, 0.0)


def server_policy(urls: tuple[str, ...] = (UNREACHABLE_UPSTREAM,), **fields: Any) -> ServerPolicy:
    """One server's compiled policy with these upstream URLs and any other fields of servers.yaml."""
    return ServerPolicy.model_validate({"upstreams": [{"url": u} for u in urls], **fields})


def api_key_principal(
    tenant: str | None = "acme", scopes: tuple[str, ...] = ("read", "write"), key_id: str = "k", **fields: Any
) -> Principal:
    """A caller authenticated by API key `key_id`."""
    return Principal(tenant=tenant, subject=f"key:{key_id}", scopes=frozenset(scopes), key_id=key_id, **fields)


def rpc(method: str, params: Mapping[str, Any] | None = None, rpc_id: int | str | None = 1) -> dict[str, Any]:
    """A JSON-RPC request (a notification with `rpc_id=None`)."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if rpc_id is not None:
        msg["id"] = rpc_id
    if params is not None:
        msg["params"] = dict(params)
    return msg


def tool_call(tool: str, arguments: Mapping[str, Any] | None = None, rpc_id: int = 1) -> dict[str, Any]:
    return rpc("tools/call", {"name": tool, "arguments": dict(arguments or {})}, rpc_id)


def context(
    server: str = "example",
    *messages: Mapping[str, Any],
    snap: Snapshot | None = None,
    policy: ServerPolicy | None = None,
    principal: Principal | None = None,
    transport: str = "streamable-http",
    http_method: str = "POST",
    client_ip: str = "127.0.0.1",
    session_id: str | None = None,
    request_id: str = "test-request",
    protocol_version: str | None = None,
) -> RequestContext:
    """A request context as a transport builds it, with `messages` (several: a batch) parsed as the body.

    The server's policy is `policy`, else the one in `snap` (which defaults to `snapshot()`)."""
    if policy is None:
        snap = snap if snap is not None else snapshot()
        policy = snap.servers.get(server)
    ctx = RequestContext(
        request_id=request_id,
        snapshot=snap,  # type: ignore[arg-type]  # a test about one server's policy needs no snapshot
        server_name=server,
        server=policy,
        client_ip=client_ip,
        transport=transport,
        http_method=http_method,
        principal=principal,
        session_id=session_id,
    )
    if messages:
        body = orjson.dumps(messages[0] if len(messages) == 1 else list(messages))
        ctx.body = body
        batch_era = "2025-03-26" if len(messages) > 1 else protocol_version
        ctx.message = parse_message(body, batch_era)
    return ctx


class FakeClock:
    """A monotonic clock that moves only when told to (`advance`)."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def write_policies(directory: Path, documents: Mapping[str, Any]) -> Path:
    """Write policy documents (from `policy_documents`) as the YAML files a gateway reads."""
    directory.mkdir(parents=True, exist_ok=True)
    for field, name in POLICY_FILES.items():
        (directory / name).write_text(yaml.safe_dump(documents.get(field, {}), sort_keys=False))
    return directory


def inprocess_settings(
    workdir: Path, documents: Mapping[str, Any], hmac_secret: str, config: Mapping[str, Any] | None = None
) -> Settings:
    """Settings for `build_app` on a temporary directory: these policies, file audit, no policy polling, the API
    key secret in a file; `config` is merged over them section by section."""
    secret = workdir / "hmac-secret"
    workdir.mkdir(parents=True, exist_ok=True)
    secret.write_text(hmac_secret)
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "policies_dir": str(write_policies(workdir / "policies", documents)),
        "policy_poll_seconds": 0,
        "audit": {
            "sink": "file",
            "path": str(workdir / "audit.jsonl"),
            "spool_path": str(workdir / "spool.jsonl"),
            "log_records": False,
        },
        "api_keys": {"hmac_secret": {"file": str(secret)}},
        "base_dir": str(workdir),
    }
    for section, values in (config or {}).items():
        current = data.get(section)
        data[section] = {**current, **values} if isinstance(current, dict) and isinstance(values, dict) else values
    return Settings.model_validate(data)
