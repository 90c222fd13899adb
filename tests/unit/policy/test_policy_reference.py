"""docs/policy-reference.md is generated from the policy models and must match them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policy.model import POLICY_FILES
from gateway.policy.reference import render_reference
from gateway.policy.schema import policy_schemas

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[3] / "docs" / "policy-reference.md"


def test_reference_is_current() -> None:
    assert DOC.read_text() == render_reference(policy_schemas()), (
        "docs/policy-reference.md is stale: run `.venv/bin/mcp-gateway schema --reference docs/policy-reference.md`"
    )


def test_reference_covers_every_policy_file_and_model_field() -> None:
    text = render_reference(policy_schemas())
    for name, model in POLICY_FILES.items():
        assert f"## `{name}`" in text
        for field_name, info in model.model_fields.items():
            assert f"| `{info.alias or field_name}` |" in text
