"""Shared pieces of the policy models: strict base class, durations/rates, secret references."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Mode = Literal["enforce", "shadow"]


class Model(BaseModel):
    """Strict, frozen base: unknown keys are errors (a typo in YAML must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]

_PER_SECONDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


class Rate(Model):
    """`rate` requests per `per`, with a `burst` (defaults to one period's worth)."""

    rate: PositiveFloat
    per: Literal["second", "minute", "hour", "day"] = "minute"
    burst: PositiveInt | None = None
    mode: Mode = "enforce"

    @property
    def per_second(self) -> float:
        return self.rate / _PER_SECONDS[self.per]

    @property
    def effective_burst(self) -> int:
        return self.burst if self.burst is not None else max(1, int(self.rate))


class SecretRef(Model):
    """A secret given by reference: an environment variable or a file, never inline in YAML."""

    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' or 'file'")
        return self

    def resolve(self, base_dir: Path | None = None) -> str:
        """Read the secret. Raises `LookupError` naming the missing reference (never the value)."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise LookupError(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None
        path = Path(self.file)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise LookupError(f"cannot read secret file {path}: {exc.strerror}") from None


def is_glob(name: str) -> bool:
    """A shell-style pattern (`fnmatch`), not a plain name: policy names, tool rules and roles are matched this way."""
    return "*" in name or "?" in name or "[" in name


# A problem found in a policy directory, and the error carrying them; here, below the loader and the compile checks
# (gateway/policy/compilers.py, gateway/auth/checks.py) that both report them.
@dataclass(frozen=True, slots=True)
class PolicyProblem:
    file: str
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.reason}"


class PolicyError(Exception):
    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))
