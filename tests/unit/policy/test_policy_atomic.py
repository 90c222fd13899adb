"""Policy files written by CLIs: atomically, permissions kept, nothing left beside them, invalid edits never land."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.auth.keysfile import append_policy_key
from gateway.cli_errors import CliError
from gateway.policy.atomic import staged_directory, write_atomic

pytestmark = pytest.mark.unit


def test_write_atomic_replaces_keeps_mode_and_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "keys.yaml"
    target.write_text("keys: []\n")
    os.chmod(target, 0o640)
    inode = target.stat().st_ino
    write_atomic(target, "keys: [] # edited\n")
    assert target.read_text() == "keys: [] # edited\n"
    assert target.stat().st_mode & 0o777 == 0o640
    assert target.stat().st_ino != inode  # a new file renamed over the old one, never rewritten in place
    assert os.listdir(tmp_path) == ["keys.yaml"]


def test_staged_directory_is_a_private_copy(tmp_path: Path) -> None:
    (tmp_path / "servers.yaml").write_text("servers: {}\n")
    (tmp_path / "keys.yaml").write_text("keys: []\n")
    with staged_directory(tmp_path, "keys.yaml", "keys: [1]\n") as stage:
        assert (Path(stage) / "keys.yaml").read_text() == "keys: [1]\n"
        assert (Path(stage) / "servers.yaml").read_text() == "servers: {}\n"
    assert (tmp_path / "keys.yaml").read_text() == "keys: []\n"
    assert not Path(stage).exists()


def test_an_edit_that_does_not_validate_never_touches_the_live_file(tmp_path: Path) -> None:
    (tmp_path / "tenants.yaml").write_text("tenants: {acme: {}}\n")
    (tmp_path / "keys.yaml").write_text("keys: []\n")
    inode = (tmp_path / "keys.yaml").stat().st_ino
    with pytest.raises(CliError, match="would not validate"):
        append_policy_key(tmp_path / "keys.yaml", {"id": "k1", "hash": "0" * 64, "tenant": "nosuch"})
    assert (tmp_path / "keys.yaml").read_text() == "keys: []\n"
    assert (tmp_path / "keys.yaml").stat().st_ino == inode  # not even rewritten with the same text
    assert sorted(os.listdir(tmp_path)) == ["keys.yaml", "tenants.yaml"]
