"""requirements/*.txt: the locks every install uses agree with pyproject.toml and with each other.

A lock that drifts from pyproject (a dependency added to one and not the other, a pin outside the declared range)
would install something nobody tested; a pin without hashes would let pip take any file of that name."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^ ;\\]+)")


def pins(name: str) -> dict[str, str]:
    """package -> version of one lock; asserts that every pin carries at least one sha256 hash."""
    text = (LOCKS / name).read_text()
    out: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", text):
        m = PIN.match(block)
        if not m:
            continue
        assert "--hash=sha256:" in block, f"{name}: {m.group(1)} is pinned without a hash"
        out[canonicalize_name(m.group(1))] = m.group(2)
    assert out, f"{name} pins nothing"
    return out


def declared(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    if extra:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    env = default_environment()
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


@pytest.mark.parametrize(("lock", "extra"), [("runtime.txt", None), ("example.txt", "example"), ("dev.txt", "dev")])
def test_every_declared_dependency_is_pinned_inside_its_range(lock: str, extra: str | None) -> None:
    locked = pins(lock)
    for req in declared(extra):
        name = canonicalize_name(req.name)
        assert name in locked, f"{lock} does not pin {req.name} (run make lock)"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"{lock} pins {req.name}=={locked[name]} outside {req.specifier} (run make lock)"
        )


def test_the_locks_agree_on_every_shared_package() -> None:
    runtime, example, dev = pins("runtime.txt"), pins("example.txt"), pins("dev.txt")
    for name, version in runtime.items():
        assert example.get(name) == version, f"example.txt and runtime.txt differ on {name}"
        assert dev.get(name) == version, f"dev.txt and runtime.txt differ on {name}"
    # the image installs the runtime set only: the SDK and test tools stay out of it
    assert "mcp" not in runtime and "pytest" not in runtime


def test_installs_go_through_the_locks() -> None:
    make = (ROOT / "Makefile").read_text()
    assert "--require-hashes" in make and "requirements/dev.txt" in make.replace("$(LOCK_DIR)", "requirements")
    docker = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "--require-hashes" in docker and "requirements/${LOCK}.txt" in docker
    assert re.search(r"ARG LOCK=runtime\b", docker)


def test_the_build_backend_is_locked_as_pyproject_declares_it() -> None:
    """The image builds the gateway without build isolation from requirements/build.txt (review: with isolation,
    pip fetched setuptools and wheel unpinned and unhashed)."""
    build = pins("build.txt")
    declared = [
        Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    ]
    listed = [
        Requirement(line) for line in (LOCKS / "build.in").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert {canonicalize_name(r.name): str(r.specifier) for r in declared} == {
        canonicalize_name(r.name): str(r.specifier) for r in listed
    }
    for req in declared:
        name = canonicalize_name(req.name)
        assert name in build and req.specifier.contains(build[name], prereleases=True)
    docker = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "requirements/build.txt" in docker and "--no-build-isolation" in docker
