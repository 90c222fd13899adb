"""keys.yaml edited through a YAML round trip (gateway/auth/keysfile.py): comments, quoting and style survive, flow
(inline) entries are found and revoked, a result that does not validate is never written, and writes are atomic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from gateway.auth.keysfile import append_policy_key, revoke_policy_key
from gateway.cli_errors import CliError, ExitCode

pytestmark = pytest.mark.unit

H1, H2, H3 = "a1" * 32, "b2" * 32, "c3" * 32


def policy_dir(tmp_path: Path, keys_text: str) -> Path:
    (tmp_path / "tenants.yaml").write_text("tenants:\n  acme: {}\n  globex: {}\n")
    (tmp_path / "keys.yaml").write_text(keys_text)
    return tmp_path / "keys.yaml"


BLOCK = f"""\
# yaml-language-server: $schema=schema/keys.schema.json
# production keys: rotate every 90 days
keys:
  # the CI key
  - id: ci1
    hash: '{H1}'   # made by `keys create`
    tenant: acme
    scopes: [read, write]
    description: "a description with: a colon"

  - id: "ops2"
    hash: {H2}
    tenant: globex
"""


def test_append_keeps_every_comment_quote_and_blank_line(tmp_path: Path) -> None:
    path = policy_dir(tmp_path, BLOCK)
    append_policy_key(path, {"id": "new3", "hash": H3, "tenant": "acme", "scopes": ["read"]})
    text = path.read_text()
    # the old text is kept byte for byte; the new entry follows in the same indentation, lists inline
    assert text.startswith(BLOCK), text
    assert text[len(BLOCK) :] == f"  - id: new3\n    hash: {H3}\n    tenant: acme\n    scopes: [read]\n"
    assert [k["id"] for k in yaml.safe_load(text)["keys"]] == ["ci1", "ops2", "new3"]


def test_revoke_block_entry_changes_only_that_entry(tmp_path: Path) -> None:
    path = policy_dir(tmp_path, BLOCK)
    assert revoke_policy_key(path, "ops2") is True
    text = path.read_text()
    assert text == BLOCK + "    revoked: true\n"
    assert revoke_policy_key(path, "ops2") is False  # already revoked: nothing written
    assert path.read_text() == text


def test_revoke_quoted_id_with_comment(tmp_path: Path) -> None:
    path = policy_dir(tmp_path, BLOCK)
    revoke_policy_key(path, "ci1")
    data = yaml.safe_load(path.read_text())
    assert data["keys"][0]["revoked"] is True and "revoked" not in data["keys"][1]
    assert "# made by `keys create`" in path.read_text() and "# the CI key" in path.read_text()


FLOW = f"""\
# inline style, one key per line
keys:
  - {{id: k1, hash: '{H1}', tenant: acme, scopes: [read]}}  # first
  - {{id: k2, hash: '{H2}', tenant: globex}}
"""


def test_flow_style_entries_are_found_and_revoked(tmp_path: Path) -> None:
    # the regular-expression editor only knew `- id:` lines: `keys list` showed these, `keys revoke` did not
    path = policy_dir(tmp_path, FLOW)
    revoke_policy_key(path, "k2")
    text = path.read_text()
    assert text.splitlines()[:3] == FLOW.splitlines()[:3]  # the other entry and its comment untouched
    assert text.splitlines()[3] == f"  - {{id: k2, hash: '{H2}', tenant: globex, revoked: true}}"
    data = yaml.safe_load(text)
    assert data["keys"][1]["revoked"] is True and "revoked" not in data["keys"][0]


def test_whole_list_inline_gets_an_inline_entry(tmp_path: Path) -> None:
    path = policy_dir(tmp_path, f"keys: [{{id: a1, hash: '{H1}', tenant: acme}}]\n")
    append_policy_key(path, {"id": "a2", "hash": H2, "tenant": "globex", "scopes": ["read"]})
    data = yaml.safe_load(path.read_text())
    assert [k["id"] for k in data["keys"]] == ["a1", "a2"]
    revoke_policy_key(path, "a1")
    assert yaml.safe_load(path.read_text())["keys"][0]["revoked"] is True


@pytest.mark.parametrize(
    "text", ["", "# no keys yet\n", "# none\nkeys: []\n", "keys:\n", "# comment\nkeys: null  # later\n"]
)
def test_append_to_empty_forms_keeps_comments(tmp_path: Path, text: str) -> None:
    path = policy_dir(tmp_path, text)
    append_policy_key(path, {"id": "a1", "hash": H1, "tenant": "acme", "scopes": ["read", "write"]})
    out = path.read_text()
    assert yaml.safe_load(out)["keys"] == [{"id": "a1", "hash": H1, "tenant": "acme", "scopes": ["read", "write"]}]
    for line in text.splitlines():
        if line.startswith("#"):
            assert line in out
    assert "- id: a1" in out  # an empty inline list grows into a block list


def test_missing_file_is_created(tmp_path: Path) -> None:
    path = policy_dir(tmp_path, "")
    path.unlink()
    append_policy_key(path, {"id": "a1", "hash": H1, "tenant": "acme"})
    assert yaml.safe_load(path.read_text())["keys"][0]["tenant"] == "acme"


def test_invalid_result_is_refused_and_file_untouched(tmp_path: Path) -> None:
    path = policy_dir(tmp_path, BLOCK)
    with pytest.raises(CliError) as info:
        append_policy_key(path, {"id": "b1", "hash": H3, "tenant": "initech"})
    assert info.value.code == ExitCode.REFUSED
    assert "unknown tenant 'initech'" in info.value.message and "left as it was" in info.value.message
    assert path.read_text() == BLOCK


def test_duplicate_and_unknown_ids_are_refused(tmp_path: Path) -> None:
    path = policy_dir(tmp_path, FLOW)
    with pytest.raises(CliError) as dup:
        append_policy_key(path, {"id": "k1", "hash": H3, "tenant": "acme"})
    assert dup.value.code == ExitCode.REFUSED and "already exists" in dup.value.message
    with pytest.raises(CliError) as missing:
        revoke_policy_key(path, "nosuch")
    assert missing.value.code == ExitCode.REFUSED and "keys list" in missing.value.message
    assert path.read_text() == FLOW


def test_broken_yaml_is_reported_in_one_line(tmp_path: Path) -> None:
    path = policy_dir(tmp_path, "keys:\n  - id: a\n   hash: [\n")
    with pytest.raises(CliError) as info:
        revoke_policy_key(path, "a")
    assert info.value.code == ExitCode.NEGATIVE and "invalid YAML" in info.value.message
    assert "\n" not in info.value.message


def test_write_is_atomic_and_keeps_the_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = policy_dir(tmp_path, BLOCK)
    path.chmod(0o640)
    inode = path.stat().st_ino
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        # the new content is complete in a hidden temporary file beside the target before the rename
        assert Path(src).parent == path.parent and Path(src).name.startswith(".keys.yaml.")
        assert yaml.safe_load(Path(src).read_text())["keys"][-1]["id"] == "n1"
        replaced.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    append_policy_key(path, {"id": "n1", "hash": H3, "tenant": "acme"})
    assert replaced == [(replaced[0][0], str(path))]
    assert path.stat().st_ino != inode  # a new file renamed over the old one, never rewritten in place
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.yaml", "tenants.yaml"]  # no temporary left
