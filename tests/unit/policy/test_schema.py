"""The policy JSON Schemas: generated from the models, committed in policies/schema/, and kept current."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.policy.model import POLICY_FILES
from gateway.policy.schema import policy_schemas, render, schema_file_name, stale_schemas, write_schemas

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
SCHEMA_DIR = ROOT / "policies" / "schema"
FIXTURES = ROOT / "tests" / "fixtures" / "policies"
REGENERATE = "mcp-gateway schema --write policies/schema"


def as_json(value: Any) -> Any:
    """YAML as an editor's language server sees it: timestamps are strings in JSON."""
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def validator(policy_file: str) -> jsonschema.Draft202012Validator:
    schema = policy_schemas()[schema_file_name(policy_file)]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schemas_match_the_models() -> None:
    stale = stale_schemas(SCHEMA_DIR)
    assert not stale, (
        f"policies/schema/ is out of date with the pydantic models ({', '.join(stale)}). "
        f"Regenerate with `{REGENERATE}` (or `.venv/bin/python -m gateway.policy.schema`) and commit the result."
    )


def test_no_stray_schema_files() -> None:
    expected = {schema_file_name(f) for f in POLICY_FILES}
    assert {p.name for p in SCHEMA_DIR.glob("*.json")} == expected


def test_one_schema_per_policy_file() -> None:
    schemas = policy_schemas()
    assert list(schemas) == [schema_file_name(f) for f in POLICY_FILES]
    for name, schema in schemas.items():
        assert schema["$schema"].endswith("2020-12/schema") and schema["$id"].endswith(name)
        assert schema["additionalProperties"] is False  # typos are errors, as in the loader


def test_output_is_byte_stable(tmp_path: Path) -> None:
    write_schemas(tmp_path)
    assert stale_schemas(tmp_path) == []
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write_schemas(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first
    assert all(b.endswith(b"\n") for b in first.values())


def test_a_changed_schema_is_detected(tmp_path: Path) -> None:
    write_schemas(tmp_path)
    target = tmp_path / "keys.schema.json"
    target.write_bytes(target.read_bytes().replace(b'"revoked"', b'"revokd"'))
    (tmp_path / "access.schema.json").unlink()
    assert sorted(stale_schemas(tmp_path)) == ["access.schema.json", "keys.schema.json"]


@pytest.mark.parametrize("policy_dir", [ROOT / "policies", FIXTURES / "good"], ids=["shipped", "good-fixture"])
def test_valid_policies_satisfy_the_schema(policy_dir: Path) -> None:
    for policy_file in POLICY_FILES:
        path = policy_dir / policy_file
        if not path.exists():
            continue
        data = as_json(yaml.safe_load(path.read_text()) or {})
        errors = [e.message for e in validator(policy_file).iter_errors(data)]
        assert errors == [], f"{path}: {errors}"


@pytest.mark.parametrize(
    ("case", "policy_file"),
    [
        ("unknown_key", "servers.yaml"),
        ("wrong_type", "tenants.yaml"),
        ("bad_scope", "keys.yaml"),
        ("bad_failure_statuses", "servers.yaml"),
    ],
)
def test_schema_rejects_what_the_loader_rejects(case: str, policy_file: str) -> None:
    data = yaml.safe_load((FIXTURES / "broken" / case / policy_file).read_text())
    assert list(validator(policy_file).iter_errors(data)), f"schema accepted broken fixture {case}"


def test_alias_is_what_the_file_uses() -> None:
    limits = policy_schemas()["limits.schema.json"]
    assert "global" in limits["properties"] and "global_" not in limits["properties"]
    assert validator("limits.yaml").is_valid({"global": {"rate": 10}})


def test_render_is_sorted_json() -> None:
    assert render({"b": 1, "a": {"d": 2, "c": 3}}) == b'{\n  "a": {\n    "c": 3,\n    "d": 2\n  },\n  "b": 1\n}\n'
