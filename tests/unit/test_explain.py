"""explain: the synthetic request, the principal from key ids and JWT claims, and the in-process run of the real
chain on a policy directory (embedded backends, no network, nothing written)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway.explain import (
    ExplainRequest,
    embedded_settings,
    explain,
    principal_from_claims,
    principal_from_key_id,
    rpc_body,
)
from gateway.jsonrpc import parse_message
from gateway.policy.loader import PolicyError, load_policy
from gateway.settings import Settings
from tests.harness import PYTHON, ROOT, api_key, default_policies

pytestmark = pytest.mark.unit


def write_policies(directory: Path, **overrides: Any) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    pol = default_policies("http://127.0.0.1:9/mcp")
    pol.update(overrides)
    raw, digest = api_key("k1", "s3cret")
    keys = [
        {"id": "k1", "hash": digest, "tenant": "acme", "scopes": ["read"]},
        {"id": "old", "hash": digest, "tenant": "acme", "scopes": ["read"], "revoked": True},
        {
            "id": "fenced",
            "hash": digest,
            "tenant": "acme",
            "scopes": ["read"],
            "allow_ips": ["10.0.0.0/8"],
            "tools": {"deny": ["add"]},
        },
    ]
    pol["keys.yaml"] = {"keys": keys}
    for name, content in pol.items():
        (directory / name).write_text(yaml.safe_dump(content))
    return {"k1": raw}


def settings_for(tmp_path: Path) -> Settings:
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    return Settings.model_validate(
        {
            "policies_dir": str(tmp_path / "live"),
            "api_keys": {"hmac_secret": {"file": str(secret)}},
            "redis": {"url": "redis://127.0.0.1:1/0"},
            "postgres": {"dsn": "postgresql://nobody@127.0.0.1:1/x"},
            "audit": {"sink": "postgres", "path": str(tmp_path / "never.jsonl")},
        }
    )


def test_rpc_body_is_a_parseable_request_with_tool_and_uri() -> None:
    call = parse_message(rpc_body("tools/call", "add", {"a": 1}, None))
    assert (call.envelopes[0].method, call.envelopes[0].tool) == ("tools/call", "add")
    read = orjson.loads(rpc_body("resources/read", None, {}, "example://x"))
    assert read["params"] == {"uri": "example://x"}
    listing = orjson.loads(rpc_body("tools/list", None, {}, None))
    assert "params" not in listing and listing["id"] == 1


def test_embedded_settings_drop_every_backend(tmp_path: Path) -> None:
    s = embedded_settings(settings_for(tmp_path), tmp_path / "cand")
    assert s.redis.url is None and s.postgres.dsn is None
    assert s.audit.sink == "log" and s.policy_poll_seconds == 0
    assert Path(s.policies_dir) == (tmp_path / "cand").resolve()


def test_key_id_principal_and_revocation(tmp_path: Path) -> None:
    write_policies(tmp_path / "live")
    snap = load_policy(tmp_path / "live")
    principal, res = principal_from_key_id(snap, "k1")
    assert res.decision == "allowed" and principal.tenant == "acme" and principal.scopes == frozenset({"read"})
    principal, res = principal_from_key_id(snap, "fenced", "192.0.2.1")
    assert principal is None and (res.reason, res.status) == ("key_ip_not_allowed", 403)
    principal, res = principal_from_key_id(snap, "fenced", "10.1.2.3")
    assert res.decision == "allowed" and principal.tools is not None
    principal, res = principal_from_key_id(snap, "old")
    assert principal is None and (res.decision, res.reason, res.status) == ("refused", "key_revoked", 401)
    assert res.code is not None and not -32768 <= res.code <= -32000


def test_claims_use_the_routes_claim_names(tmp_path: Path) -> None:
    hs_secret = tmp_path / "hs-secret"
    hs_secret.write_text("a-test-secret-of-thirty-two-bytes!!")
    servers = {
        "servers": {
            "example": {
                "upstreams": [{"url": "http://127.0.0.1:9/mcp"}],
                "owner": "acme",
                "auth": {
                    "methods": ["jwt"],
                    "jwt": {
                        "issuer": "https://idp",
                        "algorithms": ["HS256"],
                        "hs_secret": {"file": str(hs_secret)},
                        "claims": {"tenant": "org", "scopes": "perms"},
                    },
                },
            }
        }
    }
    write_policies(tmp_path / "live", **{"servers.yaml": servers})
    snap = load_policy(tmp_path / "live")
    principal, res = principal_from_claims(snap.servers["example"], {"sub": "u1", "org": "acme", "perms": ["read"]})
    assert res.decision == "allowed"
    assert (principal.tenant, principal.subject, principal.scopes, principal.method) == (
        "acme",
        "u1",
        frozenset({"read"}),
        "jwt",
    )
    principal, res = principal_from_claims(snap.servers["example"], {"org": "acme"})
    assert principal is None and res.reason == "invalid_token"


async def test_run_names_refusing_stage_and_allows_reads(tmp_path: Path) -> None:
    keys = write_policies(tmp_path / "live")
    settings = settings_for(tmp_path)
    denied = await explain(settings, ExplainRequest(server="example", method="tools/call", tool="add", key=keys["k1"]))
    assert not denied.allowed
    assert [s.stage for s in denied.stages] == ["client_guard", "authn", "authz"]
    assert denied.stages[-1].decision == "refused" and denied.stages[-1].status == 403
    assert "result   refused by authz:" in denied.render()

    allowed = await explain(settings, ExplainRequest(server="example", method="tools/list", key=keys["k1"]))
    assert allowed.allowed
    assert [s.decision for s in allowed.stages] == ["allowed"] * 6
    assert allowed.render().endswith("result   allowed")

    wrong = await explain(settings, ExplainRequest(server="example", method="tools/list", key=keys["k1"][:-3] + "xyz"))
    assert wrong.as_dict()["refused_by"] == {"stage": "authn", "reason": "unknown_key"}

    nowhere = await explain(settings, ExplainRequest(server="nope", method="tools/list", key=keys["k1"]))
    assert nowhere.as_dict()["refused_by"]["stage"] == "route"
    # nothing was written although the config names a file audit path and a PostgreSQL sink
    assert not (tmp_path / "never.jsonl").exists()


async def test_candidate_directory_errors_are_reported(tmp_path: Path) -> None:
    write_policies(tmp_path / "live")
    bad = tmp_path / "bad"
    write_policies(bad)
    (bad / "servers.yaml").write_text("servers: {example: {upstreams: []}}\n")
    with pytest.raises(PolicyError):
        await explain(settings_for(tmp_path), ExplainRequest(server="example", method="tools/list"), bad)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--jwt-claims", "{not json"], "error: --jwt-claims is not valid JSON"),
        (["--jwt-claims", "[1, 2]"], "error: --jwt-claims must be a JSON object"),
        (["--key-id", "k", "--arguments", "nope"], "error: --arguments is not valid JSON"),
        (["--key-id", "k", "--arguments", "3"], "error: --arguments must be a JSON object"),
    ],
)
def test_json_flags_are_validated_with_the_flag_named(argv: list[str], message: str) -> None:
    # a subprocess, as users run it: explain configures process-wide logging, which must not leak into other tests
    out = subprocess.run(
        [PYTHON, "-m", "gateway", "explain", "--server", "example", "--tool", "add", *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert message in out.stderr
