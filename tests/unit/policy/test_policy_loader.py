"""The policy loader on good and broken fixtures: every problem names the file, the path inside it and the reason.

Broken fixtures live in tests/fixtures/policies/broken/<case>/: each holds one file that replaces its namesake in a
copy of tests/fixtures/policies/good/ (or adds a file), so every case breaks exactly one thing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.policy.loader import PolicyError, PolicyProblem, load_policy
from gateway.policy.model import POLICY_FILES

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "policies"
GOOD = FIXTURES / "good"
BROKEN = FIXTURES / "broken"
ROOT = Path(__file__).resolve().parents[3]
EXPECTED_FILES = ", ".join(POLICY_FILES)

# case -> the exact problems it must produce (file, path, reason)
BROKEN_CASES: dict[str, list[PolicyProblem]] = {
    "bad_yaml": [
        PolicyProblem(
            "servers.yaml", "line 5, column 6", "invalid YAML: expected <block end>, but found '<block mapping start>'"
        )
    ],
    "duplicate_yaml_key": [PolicyProblem("servers.yaml", "line 6, column 3", "invalid YAML: duplicate key 'example'")],
    "unknown_key": [PolicyProblem("servers.yaml", "servers.example.timeouts.conect", "Extra inputs are not permitted")],
    "wrong_type": [
        PolicyProblem(
            "tenants.yaml", "tenants.acme.weight", "Input should be a valid number, unable to parse string as a number"
        )
    ],
    "unknown_tenant": [PolicyProblem("keys.yaml", "keys[0].tenant", "unknown tenant 'initech'")],
    "unknown_server": [PolicyProblem("tenants.yaml", "tenants.acme.servers[1]", "unknown server 'exmaple'")],
    "unknown_access_server": [PolicyProblem("access.yaml", "rules[0].server", "unknown server 'nowhere'")],
    "bad_cidr": [PolicyProblem("keys.yaml", "keys[0].allow_ips[1]", "not an IP network: '10.0.0.0/33'")],
    "bad_allowlist": [PolicyProblem("limits.yaml", "ddos.allowlist[1]", "not an IP network: 'localhost'")],
    "duplicate_key_id": [PolicyProblem("keys.yaml", "keys[1].id", "duplicate key id 'acme1'")],
    "unknown_file": [PolicyProblem("server.yaml", "", f"unknown policy file (expected one of {EXPECTED_FILES})")],
    "not_a_mapping": [PolicyProblem("access.yaml", "", "top level must be a mapping")],
    "bad_scope": [PolicyProblem("keys.yaml", "keys[0].scopes[1]", "Input should be 'read', 'write' or 'admin'")],
    "bad_url": [
        PolicyProblem("servers.yaml", "servers.example.upstreams[0].url", "must be an http(s):// or ws(s):// URL")
    ],
    "bad_server_name": [
        PolicyProblem(
            "servers.yaml", "servers", "server name 'bad name' may use only letters, digits, '-', '_' and '.'"
        )
    ],
    "jwt_without_settings": [
        PolicyProblem("servers.yaml", "servers.example.auth", "methods includes 'jwt' but no 'jwt' settings are given")
    ],
    # a union (list of codes or "5xx"): one problem at the field, not one per union member with pydantic's tags
    "bad_failure_statuses": [
        PolicyProblem(
            "servers.yaml",
            "servers.example.breaker.failure_statuses",
            "Input should be a valid list, or Input should be '5xx'",
        )
    ],
}


def copy_good(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(GOOD, target)
    return target


def test_every_broken_fixture_has_an_expectation() -> None:
    assert sorted(p.name for p in BROKEN.iterdir() if p.is_dir()) == sorted(BROKEN_CASES)


def test_good_fixtures_load() -> None:
    snap = load_policy(GOOD)
    assert sorted(snap.servers) == ["example", "public-docs"]
    assert sorted(snap.tenants) == ["acme", "globex"]
    assert sorted(snap.keys) == ["acme1", "globex1"]
    example = snap.servers["example"]
    assert [u.weight for u in example.upstreams] == [1, 2]
    assert example.breaker.failure_statuses == [502, 503]
    assert example.timeouts.first_byte == 30 and example.timeouts.idle == 120
    assert snap.limits.global_ is not None and snap.limits.global_.per_second == 1000
    assert snap.keys["acme1"].rate_limit is not None and snap.keys["acme1"].rate_limit.effective_burst == 20
    assert snap.access_rules[1].tools.mode == "shadow"
    assert snap.source_dir == GOOD.resolve() and len(snap.version) == 16


def test_shipped_policies_load() -> None:
    snap = load_policy(ROOT / "policies")
    assert "example" in snap.servers and "demo" in snap.keys


@pytest.mark.parametrize("case", sorted(BROKEN_CASES))
def test_broken_fixture_names_file_path_and_reason(tmp_path: Path, case: str) -> None:
    directory = copy_good(tmp_path)
    for f in (BROKEN / case).iterdir():
        shutil.copy(f, directory / f.name)
    with pytest.raises(PolicyError) as info:
        load_policy(directory)
    assert info.value.problems == BROKEN_CASES[case]
    for problem in BROKEN_CASES[case]:
        assert str(problem) in str(info.value)


def test_problem_text() -> None:
    assert str(PolicyProblem("keys.yaml", "keys[0].id", "bad")) == "keys.yaml: keys[0].id: bad"
    assert str(PolicyProblem("x.yaml", "", "unknown")) == "x.yaml: unknown"


def test_problems_in_several_files_are_all_reported(tmp_path: Path) -> None:
    directory = copy_good(tmp_path)
    shutil.copy(BROKEN / "wrong_type" / "tenants.yaml", directory)
    shutil.copy(BROKEN / "unknown_key" / "servers.yaml", directory)
    shutil.copy(BROKEN / "bad_yaml" / "servers.yaml", directory / "servers.yaml")
    shutil.copy(BROKEN / "bad_scope" / "keys.yaml", directory)
    with pytest.raises(PolicyError) as info:
        load_policy(directory)
    # in POLICY_FILES order, one pass
    assert [p.file for p in info.value.problems] == ["servers.yaml", "tenants.yaml", "keys.yaml"]


def test_schema_errors_come_before_cross_checks(tmp_path: Path) -> None:
    # cross-checks need valid models; a schema problem alone is reported, not a cascade of follow-ups
    directory = copy_good(tmp_path)
    shutil.copy(BROKEN / "wrong_type" / "tenants.yaml", directory)
    shutil.copy(BROKEN / "unknown_tenant" / "keys.yaml", directory)
    with pytest.raises(PolicyError) as info:
        load_policy(directory)
    assert [p.file for p in info.value.problems] == ["tenants.yaml"]


def test_missing_and_empty_files_mean_defaults(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    directory.mkdir()
    (directory / "servers.yaml").write_text("servers:\n  s:\n    upstreams: [{url: 'http://127.0.0.1:1/mcp'}]\n")
    (directory / "limits.yaml").write_text("# nothing yet\n")
    snap = load_policy(directory)
    assert list(snap.servers) == ["s"] and not snap.tenants and not snap.keys
    assert snap.limits.fail_mode == "fallback"


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "absent")
    assert info.value.problems == [PolicyProblem(str(tmp_path / "absent"), "", "policy directory does not exist")]


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    directory.mkdir()
    (directory / "servers.yaml").write_text(
        "servers:\n"
        "  a: &base\n    upstreams: [{url: 'http://127.0.0.1:1/mcp'}]\n    description: base\n"
        "  b:\n    <<: *base\n    description: overridden\n"
    )
    snap = load_policy(directory)
    assert snap.servers["b"].description == "overridden" and snap.servers["b"].upstreams[0].url.endswith(":1/mcp")


def test_version_follows_content(tmp_path: Path) -> None:
    directory = copy_good(tmp_path)
    v1 = load_policy(directory).version
    assert load_policy(directory).version == v1
    (directory / "access.yaml").write_text("rules: []\n")
    assert load_policy(directory).version != v1


def test_snapshot_is_read_only() -> None:
    snap = load_policy(GOOD)
    with pytest.raises(TypeError):
        snap.servers["new"] = snap.servers["example"]  # type: ignore[index]
    with pytest.raises(ValueError, match="frozen"):
        snap.servers["example"].owner = "globex"  # type: ignore[misc]


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    directory = copy_good(tmp_path)
    (directory / "tenants.yaml").write_bytes(b"tenants:\n  acme: {}\n  \xff\xfe: {}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(directory)
    assert info.value.problems == [PolicyProblem("tenants.yaml", "line 3, column 3", "not UTF-8 text")]


def test_a_mapping_key_of_the_wrong_type(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    directory.mkdir()
    (directory / "servers.yaml").write_text("servers:\n  1:\n    upstreams: [{url: 'http://127.0.0.1:1/mcp'}]\n")
    with pytest.raises(PolicyError) as info:
        load_policy(directory)
    # a key is a place in the file, not a list index
    assert info.value.problems == [PolicyProblem("servers.yaml", "servers.1.[key]", "Input should be a valid string")]


yaml_ish = st.text(
    alphabet=st.sampled_from(list("abcdeklmnorstuvwy:-_ {}[],\n'\"&*!#0123456789.@%|>?")), max_size=120
) | st.sampled_from(
    [
        "servers: {a: {upstreams: [{url: 'http://x'}], timeouts: {connect: -1}}}",
        "servers: {a: {upstreams: []}}",
        "keys: [{id: a, hash: b, tenant: c}]",
        "tenants: {a: {servers: [x], weight: 0}}",
        "rules: [{tenant: 5}]",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=yaml_ish, name=st.sampled_from(sorted(POLICY_FILES)))
def test_fuzz_any_file_content_is_a_snapshot_or_policy_errors(tmp_path: Path, text: str, name: str) -> None:
    directory = tmp_path / "fuzz"
    directory.mkdir(exist_ok=True)
    for old in directory.iterdir():
        old.unlink()
    (directory / name).write_text(text)
    try:
        load_policy(directory)
    except PolicyError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.file == name and problem.reason


def test_access_rules_take_shell_patterns_but_plain_names_must_exist(tmp_path: Path) -> None:
    """docs/identity.md: access.yaml `tenant`, `server` and `role` are exact names or shell-style patterns (authz
    matches them with fnmatchcase). A pattern may match nothing yet; a plain name that names nothing is a typo."""
    directory = copy_good(tmp_path)
    (directory / "access.yaml").write_text(
        "rules:\n"
        "  - {server: 'ex*', tools: {deny: [whoami]}}\n"
        "  - {tenant: 'glo?ex', server: 'crm-[ab]', tools: {deny: [x]}}\n"
    )
    snap = load_policy(directory)
    assert [r.server for r in snap.policy.access.rules] == ["ex*", "crm-[ab]"]
    (directory / "access.yaml").write_text("rules:\n  - {server: exmaple, tools: {deny: [x]}}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(directory)
    assert [str(p) for p in info.value.problems] == [
        str(PolicyProblem("access.yaml", "rules[0].server", "unknown server 'exmaple'"))
    ]
