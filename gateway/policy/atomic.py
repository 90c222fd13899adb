"""Writing a policy file the way a running gateway can never see half of it.

The gateway polls `policies/*.yaml` and reloads on any change, so a CLI that edits a file in place could be read
mid-write (a truncated servers.yaml would have been taken as "no servers"). Every CLI writes through here: a new
file beside the target with a unique name, fsynced, renamed over the target (atomic on POSIX), then the directory
fsynced so the rename survives a crash. The temporary name starts with a dot and ends in `.tmp`, which the policy
watcher's `*.y*ml` glob never matches.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileNotFoundError):
            shutil.copymode(path, tmp)  # keep the permissions the operator gave the file
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staged_directory(directory: Path, name: str, text: str) -> tempfile.TemporaryDirectory[str]:
    """A private copy of the policy directory with `name` replaced by `text`: an edit is validated there, so the
    live directory only ever holds files that validated."""
    stage = tempfile.TemporaryDirectory(prefix="mgw-policy-")
    for src in directory.glob("*.y*ml"):
        if src.is_file():
            shutil.copy2(src, Path(stage.name) / src.name)
    (Path(stage.name) / name).write_text(text, encoding="utf-8")
    return stage
