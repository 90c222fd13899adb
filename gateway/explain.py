"""`mcp-gateway explain`: what would the chain decide for this caller, server, method and tool?

Builds the real chain (`gateway.compose.build_chain`) from a policy directory (the live one, or a candidate given
with `--policies` before it is reloaded) on a gateway from `gateway.compose.build_gateway`, with every backend
forced to its embedded, in-process form: no listener, no Redis, no PostgreSQL, nothing written. Then each
pre-forward stage runs in the fixed order on a synthetic request and prints its decision:

    allowed         the stage let the request through
    shadow-refused  a rule in `mode: shadow` would have refused (counted and audited in production, not enforced)
    refused         the stage refused: stage, reason, HTTP status and JSON-RPC code, as a client would see them

Exit status: 0 allowed, 1 refused, 2 usage or policy error.

Limits and counters start empty here (one fresh request), and breakers start closed: `explain` answers "is this
allowed by policy", not "is this caller out of quota right now".
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.context import RequestContext
from gateway.errors import GatewayError


@dataclass
class StageResult:
    stage: str
    decision: str  # "allowed", "refused", "shadow-refused", "skipped"
    reason: str | None = None
    status: int | None = None
    code: int | None = None
    message: str | None = None
    detail: str | None = None
    shadow: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stage": self.stage, "decision": self.decision}
        for key in ("reason", "status", "code", "message", "detail"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.shadow:
            out["shadow"] = self.shadow
        return out


@dataclass
class Explanation:
    policy_dir: str
    policy_version: str
    server: str
    method: str
    tool: str | None
    principal: str | None
    stages: list[StageResult]

    @property
    def allowed(self) -> bool:
        return all(s.decision != "refused" for s in self.stages)

    def as_dict(self) -> dict[str, Any]:
        refused = next((s for s in self.stages if s.decision == "refused"), None)
        return {
            "policy_dir": self.policy_dir,
            "policy_version": self.policy_version,
            "server": self.server,
            "method": self.method,
            "tool": self.tool,
            "principal": self.principal,
            "stages": [s.as_dict() for s in self.stages],
            "result": "allowed" if refused is None else "refused",
            "refused_by": None if refused is None else {"stage": refused.stage, "reason": refused.reason},
        }

    def render(self) -> str:
        lines = [
            f"policy   {self.policy_dir} (version {self.policy_version})",
            f"request  server={self.server} method={self.method}" + (f" tool={self.tool}" if self.tool else ""),
        ]
        if self.principal:
            lines.append(f"caller   {self.principal}")
        lines.append("")
        for s in self.stages:
            text = f"{s.stage:<13} {s.decision}"
            if s.decision == "refused":
                text += f"  reason={s.reason} status={s.status} code={s.code}: {s.message}"
            if s.detail:
                text += f"  ({s.detail})"
            lines.append(text)
            lines.extend(f"{'':<13}   shadow-refused: {reason} (mode: shadow, not enforced)" for reason in s.shadow)
        lines.append("")
        refused = next((s for s in self.stages if s.decision == "refused"), None)
        if refused is None:
            shadows = [r for s in self.stages for r in s.shadow]
            note = f" (would be refused by shadow rules: {', '.join(shadows)})" if shadows else ""
            lines.append(f"result   allowed{note}")
        else:
            lines.append(f"result   refused by {refused.stage}: {refused.reason}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- request and principal


def rpc_body(method: str, tool: str | None, arguments: dict[str, Any], uri: str | None) -> bytes:
    params: dict[str, Any] = {}
    if method in ("tools/call", "prompts/get"):
        params = {"name": tool or "", "arguments": arguments}
    elif method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        params = {"uri": uri or ""}
    elif method == "initialize":
        params = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "mcp-gateway-explain", "version": "1"},
        }
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params:
        body["params"] = params
    return orjson.dumps(body)


def _authn_refusal(reason: str, message: str) -> StageResult:
    from gateway.errors import Unauthenticated

    err = Unauthenticated(message, reason=reason)
    return StageResult("authn", "refused", err.reason, err.status, err.code, err.message)


def principal_from_key_id(snapshot: Any, key_id: str, client_ip: str = "127.0.0.1") -> tuple[Any, StageResult]:
    """The principal keys.yaml gives this key id, with authn's own checks (revoked, expired, allowed networks)
    and the key's own tool rules. Keys stored only in PostgreSQL are not looked up (explain uses no database)."""
    from gateway.auth.keyrecord import from_policy
    from gateway.errors import GatewayError

    key = snapshot.keys.get(key_id)
    if key is None:
        return None, _authn_refusal("unknown_key", f"no key with id {key_id!r} in keys.yaml")
    try:
        principal = from_policy(key).admit(client_ip)  # authn's own checks, from the same code
    except GatewayError as err:
        return None, StageResult("authn", "refused", err.reason, err.status, err.code, err.message)
    return principal, StageResult("authn", "allowed", detail=f"key id {key_id} from keys.yaml (secret not checked)")


def principal_from_claims(server: Any, claims: dict[str, Any]) -> tuple[Any, StageResult]:
    """The principal a verified JWT with these claims maps to on this route (signature, issuer, audience and
    expiry are not checked: the claims are taken as already verified)."""
    from gateway.auth.principal import Principal
    from gateway.policy.auth import JwtClaims

    if server is not None and "jwt" not in server.auth.methods:
        return None, _authn_refusal("jwt_not_accepted", "this route does not accept JWTs")
    names = server.auth.jwt.claims if server is not None and server.auth.jwt is not None else JwtClaims()
    raw_scopes = claims.get(names.scopes, [])
    scopes = raw_scopes.split() if isinstance(raw_scopes, str) else [str(s) for s in raw_scopes or []]
    tenant = claims.get(names.tenant)
    subject = claims.get(names.subject)
    if subject is None:
        return None, _authn_refusal("invalid_token", f"no {names.subject!r} claim")
    principal = Principal(
        tenant=str(tenant) if tenant is not None else None,
        subject=str(subject),
        role=str(claims.get(names.role, "user")),
        scopes=frozenset(scopes),
        method="jwt",
    )
    return principal, StageResult("authn", "allowed", detail="JWT claims given (signature not checked)")


def describe(principal: Any) -> str | None:
    if principal is None:
        return None
    scopes = ",".join(sorted(principal.scopes)) or "-"
    return f"tenant={principal.tenant} subject={principal.subject} role={principal.role} scopes={scopes}"


# ---------------------------------------------------------------------- the run


@dataclass
class ExplainRequest:
    server: str
    method: str
    tool: str | None = None
    uri: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    key_id: str | None = None
    jwt_claims: dict[str, Any] | None = None
    ip: str = "127.0.0.1"
    protocol_version: str = "2025-06-18"


def embedded_settings(settings: Any, policies: Path | None) -> Any:
    """The same settings with every backend in-process and nothing written to disk."""
    update: dict[str, Any] = {
        "redis": settings.redis.model_copy(update={"url": None}),
        "postgres": settings.postgres.model_copy(update={"dsn": None, "reader_dsn": None}),
        "audit": settings.audit.model_copy(update={"sink": "log", "log_records": False}),
        # nothing exported either: no tracer, no SDK loaded
        "tracing": settings.tracing.model_copy(update={"enabled": False}),
        "policy_poll_seconds": 0.0,
    }
    if policies is not None:
        update["policies_dir"] = str(policies.resolve())
    return settings.model_copy(update=update)


async def explain(settings: Any, req: ExplainRequest, policies: Path | None = None) -> Explanation:
    from gateway.compose import build_chain, build_gateway
    from gateway.jsonrpc import parse_message
    from gateway.policy.loader import load_policy

    settings = embedded_settings(settings, policies)
    directory = settings.path(settings.policies_dir)
    snapshot = load_policy(directory)  # PolicyError propagates: the caller prints the problems
    chain = build_chain(snapshot, build_gateway(settings))

    headers: CIMultiDict[str] = CIMultiDict(
        {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": req.protocol_version,
        }
    )
    if req.key:
        headers["Authorization"] = f"Bearer {req.key}"
    body = rpc_body(req.method, req.tool, req.arguments, req.uri)
    server = snapshot.servers.get(req.server)
    ctx = RequestContext(
        request_id=f"explain-{uuid.uuid4().hex[:12]}",
        snapshot=snapshot,
        server_name=req.server,
        server=server,
        client_ip=req.ip,
        transport=server.transport if server is not None else "streamable-http",
        http_method="POST",
        headers=CIMultiDictProxy(headers),
        body=body,
        message=parse_message(body, req.protocol_version),
        protocol_version=req.protocol_version,
    )
    ctx.bytes_in = len(body)

    results: list[StageResult] = []
    if server is None:
        # the transports answer an unknown server before the chain runs; say so the same way
        from gateway.errors import NotFound

        err = NotFound(f"no MCP server named {req.server!r}")
        results.append(StageResult("route", "refused", err.reason, err.status, err.code, err.message))
        return Explanation(str(directory), snapshot.version, req.server, req.method, req.tool, None, results)

    synthetic_authn = req.key is None and (req.key_id is not None or req.jwt_claims is not None)
    try:
        for flt in chain.filters:
            if flt.stage == "authn" and synthetic_authn:
                if req.key_id is not None:
                    principal, res = principal_from_key_id(snapshot, req.key_id, req.ip)
                else:
                    principal, res = principal_from_claims(server, req.jwt_claims or {})
                results.append(res)
                if principal is None:
                    break
                ctx.principal = principal
                continue
            before = len(ctx.shadow)
            try:
                await flt(ctx)
            except GatewayError as err:
                results.append(
                    StageResult(
                        flt.stage,
                        "refused",
                        err.reason,
                        err.status,
                        err.code,
                        err.message,
                        shadow=[s.reason for s in ctx.shadow[before:]],
                    )
                )
                break
            shadows = [s.reason for s in ctx.shadow[before:]]
            res = StageResult(flt.stage, "shadow-refused" if shadows else "allowed", shadow=shadows)
            if flt.stage == "authn" and ctx.principal is not None:
                res.detail = describe(ctx.principal)
            results.append(res)
    finally:
        # release what the stages took (concurrency slots); nothing is observed, audited or forwarded
        while ctx.releases:
            release = ctx.releases.pop()
            try:
                release()
            except Exception:  # an in-memory slot of a throwaway store: nothing to recover
                continue
    if ctx.principal is not None and results and results[-1].decision != "refused":
        results.append(StageResult("forward", "allowed", detail=f"would forward to {req.server}"))
    return Explanation(
        str(directory), snapshot.version, req.server, req.method, req.tool, describe(ctx.principal), results
    )


# ---------------------------------------------------------------------- CLI


def _json_object(flag: str, text: str | None) -> dict[str, Any] | None:
    """The JSON object given with `flag`, None when the flag was not given; ValueError names the flag."""
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object")
    return value


def _cmd_explain(args: argparse.Namespace) -> int:
    from gateway.logging import configure_logging
    from gateway.policy.loader import PolicyError
    from gateway.settings import SettingsError, load_settings

    # stdout carries the explanation (JSON with --json); the components' own log lines go to stderr, warnings only
    configure_logging("warning", "console")

    given = [x for x in (args.key, args.key_id, args.jwt_claims) if x is not None]
    if len(given) > 1:
        print("error: give at most one of --key, --key-id, --jwt-claims", file=sys.stderr)
        return 2
    try:
        claims = _json_object("--jwt-claims", args.jwt_claims)
        arguments = _json_object("--arguments", args.arguments) or {}
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.method == "tools/call" and not args.tool:
        print("error: tools/call needs --tool", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config if Path(args.config).exists() else None)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    req = ExplainRequest(
        server=args.server,
        method=args.method,
        tool=args.tool,
        uri=args.uri,
        arguments=arguments,
        key=args.key,
        key_id=args.key_id,
        jwt_claims=claims,
        ip=args.ip,
        protocol_version=args.protocol_version,
    )
    policies = Path(args.policies) if args.policies else None
    try:
        result = asyncio.run(explain(settings, req, policies))
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(result.render())
    return 0 if result.allowed else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "explain",
        help="show each chain stage's decision for a caller, server, method and tool (exit 0 allowed, 1 refused)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    who = p.add_argument_group("caller (at most one; none = anonymous)")
    who.add_argument("--key", help="a full API key (mgw_...): authn checks it like a real request")
    who.add_argument("--key-id", help="an API key id from keys.yaml (the secret is not needed)")
    who.add_argument("--jwt-claims", help="JWT claims as a JSON object, taken as already verified")
    p.add_argument("--server", required=True, help="server name (the {server} in /mcp/{server})")
    p.add_argument("--method", default="tools/call", help="MCP method (default tools/call)")
    p.add_argument("--tool", help="tool name (tools/call) or prompt name (prompts/get)")
    p.add_argument("--uri", help="resource URI (resources/read)")
    p.add_argument("--arguments", help="tool arguments as a JSON object (they can change a tool's cost)")
    p.add_argument("--ip", default="127.0.0.1", help="client IP address (default 127.0.0.1)")
    p.add_argument("--protocol-version", default="2025-06-18", help="MCP-Protocol-Version of the request")
    p.add_argument("--policies", help="candidate policy directory (default: the one in the config)")
    p.add_argument("--config", "-c", default="config.yaml")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.set_defaults(func=_cmd_explain)
