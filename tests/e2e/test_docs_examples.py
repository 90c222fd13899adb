"""Every YAML example in README.md and docs/*.md goes through `mcp-gateway check`, so docs and loader cannot drift.

An example is a fragment of one policy file; which one is told by a first comment line naming it (`# access.yaml`,
`# policies/limits.yaml`) or else by its top-level keys. It is merged into a copy of the repository's `policies/`
(plus the tenants the examples name), as an operator would paste it: servers, tenants and keys are added, access
rules and limits replace the file's. An example no file can be told for fails the test: name its file in a first
comment line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import PYTHON, ROOT

pytestmark = pytest.mark.e2e

EXE = str(Path(PYTHON).parent / "mcp-gateway")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```ya?ml[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
FILE_COMMENT = re.compile(r"^#\s*(?:policies/)?(servers|tenants|keys|limits|access)\.yaml\b")
BY_KEY = {"servers": "servers.yaml", "tenants": "tenants.yaml", "keys": "keys.yaml", "rules": "access.yaml"}
LIMITS_KEYS = {"global", "tenant_default", "tiers", "ip", "fail_mode", "fallback_share", "costs", "streams", "ddos"}
# the server an example of one server's settings (`auth:` ...) is set on
FRAGMENT_SERVER = {"upstreams": [{"url": "http://127.0.0.1:9001/mcp"}], "owner": "acme"}
# the tenants the examples name, besides the repository's own
EXAMPLE_TENANTS = {"acme": {"servers": []}, "globex": {"servers": []}}


def examples() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for m in BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append((f"{doc.relative_to(ROOT)}:{line}", m.group(1)))
    return found


EXAMPLES = examples()


def target_of(source: str, data: Any) -> str:
    first = source.lstrip().splitlines()[0] if source.strip() else ""
    named = FILE_COMMENT.match(first)
    if named:
        return f"{named.group(1)}.yaml"
    assert isinstance(data, dict), f"an example is a mapping, not {type(data).__name__}"
    keys = set(data)
    if len(keys) == 1 and next(iter(keys)) in BY_KEY:
        return BY_KEY[next(iter(keys))]
    if keys <= LIMITS_KEYS:
        return "limits.yaml"
    if keys <= set(FRAGMENT_SERVER) | {"auth", "upstream_auth", "timeouts", "breaker", "health", "retry", "pool"}:
        return "server"
    raise AssertionError(f"cannot tell which policy file this example belongs to (keys {sorted(keys)})")


def merged(policies: Path, target: str, data: dict[str, Any]) -> None:
    def load(name: str) -> dict[str, Any]:
        return yaml.safe_load((policies / name).read_text()) or {}

    def save(name: str, content: dict[str, Any]) -> None:
        (policies / name).write_text(yaml.safe_dump(content, sort_keys=False))

    tenants = load("tenants.yaml")
    tenants["tenants"] = {**EXAMPLE_TENANTS, **tenants.get("tenants", {})}
    save("tenants.yaml", tenants)
    if target == "server":
        target, data = "servers.yaml", {"servers": {"docs": {**FRAGMENT_SERVER, **data}}}
    current = load(target)
    if target in ("servers.yaml", "tenants.yaml"):
        key = target.removesuffix(".yaml")
        current[key] = {**current.get(key, {}), **data[key]}
    elif target == "keys.yaml":
        current["keys"] = [*current.get("keys", []), *data["keys"]]
    else:
        current = data
    save(target, current)


@pytest.mark.parametrize(("where", "source"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_docs_example_passes_check(tmp_path: Path, where: str, source: str) -> None:
    data = yaml.safe_load(source)
    if data is None:
        # only comments (e.g. the editor's schema line): nothing the loader reads
        assert all(not line.strip() or line.lstrip().startswith("#") for line in source.splitlines())
        return
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies, ignore=shutil.ignore_patterns("schema"))
    merged(policies, target_of(source, data), data)
    done = subprocess.run([EXE, "check", str(policies)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{where}: `mcp-gateway check` refused the example:\n{done.stderr}"


def test_docs_have_examples_to_check() -> None:
    """The extraction finds the examples (a changed fence style would otherwise check nothing)."""
    checked = [w for w, s in EXAMPLES if yaml.safe_load(s) is not None]
    assert len(checked) >= 8, checked
    assert any(w.startswith("docs/policy-reference.md") or w.startswith("docs/identity.md") for w in checked)
