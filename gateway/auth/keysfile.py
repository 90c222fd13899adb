"""keys.yaml edited as YAML, not as text: `mcp-gateway keys create --policies` appends an entry and `keys revoke`
sets `revoked: true`, through ruamel.yaml's round trip, which keeps the operator's comments, key order, quoting,
indentation and flow (`{id: a, ...}`) or block style. The edited file is validated with the rest of the policy
directory on a private copy and only then written atomically (gateway/policy/atomic.py), so a running gateway
never reads an invalid or half-written keys.yaml.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.util import load_yaml_guess_indent

from gateway.cli_errors import CliError, ExitCode
from gateway.policy.atomic import staged_directory, write_atomic
from gateway.policy.loader import PolicyError, load_policy


class KeysDocument:
    """One keys.yaml, loaded for a round trip."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.parent.is_dir():
            raise CliError(f"{path.parent}: no such policy directory", ExitCode.FILE)
        try:
            self.original = path.read_text(encoding="utf-8") if path.exists() else ""
        except UnicodeDecodeError:
            raise CliError(f"{path}: not UTF-8 text", ExitCode.NEGATIVE) from None
        self.yaml = YAML(typ="rt")
        self.yaml.preserve_quotes = True
        self.yaml.width = 4096  # never re-wrap a long line (a description) the operator wrote on one line
        self.root: CommentedMap | None = None
        self.header = ""  # a comment-only file: kept above what is written
        if not self.original.strip():
            return
        try:
            data, indent, offset = load_yaml_guess_indent(self.original, yaml=self.yaml)
        except YAMLError as exc:
            raise CliError(
                f"{path}: invalid YAML ({' '.join(str(exc).split())}); fix it first (`mcp-gateway check`)",
                ExitCode.NEGATIVE,
            ) from None
        if data is None:
            self.header = self.original if self.original.endswith("\n") else self.original + "\n"
            return
        if not isinstance(data, CommentedMap):
            raise CliError(f"{path}: the top level must be a mapping with a `keys:` list", ExitCode.NEGATIVE)
        self.root = data
        # the sequence indentation of the file (`keys:\n  - id:` is 4 with offset 2), so new lines match the old
        self.yaml.indent(mapping=2, sequence=indent or 2, offset=offset or 0)

    def keys(self, create: bool = False) -> CommentedSeq | None:
        if self.root is None:
            if not create:
                return None
            self.root = CommentedMap()
        seq = self.root.get("keys")
        if seq is None and create:
            seq = CommentedSeq()
            self.root["keys"] = seq
        if seq is not None and not isinstance(seq, CommentedSeq):
            raise CliError(f"{self.path}: `keys` must be a list", ExitCode.NEGATIVE)
        return seq

    def find(self, key_id: str) -> CommentedMap | None:
        for entry in self.keys() or []:
            if isinstance(entry, CommentedMap) and str(entry.get("id")) == key_id:
                return entry
        return None

    def render(self) -> str:
        out = io.StringIO()
        self.yaml.dump(self.root, out)
        return self.header + out.getvalue()


def _entry(entry: dict[str, Any]) -> CommentedMap:
    """A new entry in block style with its lists inline (`scopes: [read, write]`), like the documented examples."""
    out = CommentedMap()
    for name, value in entry.items():
        if isinstance(value, list):
            seq = CommentedSeq(value)
            seq.fa.set_flow_style()
            out[name] = seq
        elif isinstance(value, dict):
            out[name] = _entry(value)
        else:
            out[name] = value
    return out


def append_policy_key(path: Path, entry: dict[str, Any]) -> None:
    doc = KeysDocument(path)
    if doc.find(str(entry["id"])) is not None:
        raise CliError(f"key id {entry['id']!r} already exists in {path}; choose another --id", ExitCode.REFUSED)
    seq = doc.keys(create=True)
    assert seq is not None
    if not seq and seq.fa.flow_style():
        seq.fa.set_block_style()  # `keys: []` grows into a block list, not one ever longer line
    new = _entry(entry)
    if seq.fa.flow_style():
        new.fa.set_flow_style()  # a list written inline gets an inline entry
    seq.append(new)
    write_validated(path, doc.render())


def revoke_policy_key(path: Path, key_id: str) -> bool:
    """Set `revoked: true` on the entry; False when it already was (nothing written)."""
    doc = KeysDocument(path)
    entry = doc.find(key_id)
    if entry is None:
        raise CliError(
            f"no key {key_id!r} in {path}; `mcp-gateway keys list --policies {path.parent}` shows the ids",
            ExitCode.REFUSED,
        )
    if entry.get("revoked") is True:
        return False
    entry["revoked"] = True
    write_validated(path, doc.render())
    return True


def write_validated(path: Path, text: str) -> None:
    """Replace the file with `text` only if the policy directory validates with it; otherwise leave it as it was."""
    with staged_directory(path.parent, path.name, text) as stage:
        try:
            load_policy(stage)
        except PolicyError as exc:
            first = exc.problems[0]
            more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
            raise CliError(
                f"the change would not validate, {path.name} left as it was: {first}{more}", ExitCode.REFUSED
            ) from None
    write_atomic(path, text)
