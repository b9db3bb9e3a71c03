"""What every theory experiment hands back, and how it is written down.

A ``Prediction`` is one statement of a paper, the verdict of this run ("holds / does not hold here")
and the numbers that decided it, so that the report never states a verdict without its evidence. A
``Gain`` is a student's relative improvement over its teacher across seeds, with its standard error.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

ROUND_OFF = 1e-9   # relative error differences below this are floating-point noise, not gains


@dataclass(frozen=True)
class Prediction:
    """One prediction of a paper, checked on one run.

    claim: the prediction in words, with the paper's section; holds: the verdict on this run;
    evidence: the numbers it rests on and the threshold used (thresholds are ours, and say so).
    """
    claim: str
    holds: bool
    evidence: str

    @property
    def verdict(self) -> str:
        return "holds here" if self.holds else "does not hold here"


@dataclass(frozen=True)
class Gain:
    """The student's relative improvement over its teacher, (teacher - student) / teacher: its mean
    over seeds and the standard error of that mean."""
    mean: float
    stderr: float

    def significant(self, z: float) -> bool:
        """The mean exceeds z standard errors, and round-off: a student that reproduces its teacher
        (lambda_S = 0 with m > d) differs from it by about 1e-16."""
        return self.mean > max(z * self.stderr, ROUND_OFF)

    def __str__(self) -> str:
        return f"{self.mean:+.1%} +- {self.stderr:.1%}"


def gain(teacher: Sequence[float], student: Sequence[float]) -> Gain:
    """The Gain of ``student`` over ``teacher``, paired by seed (equal-length sequences of errors)."""
    relative = (np.asarray(teacher) - np.asarray(student)) / np.asarray(teacher)
    stderr = float(relative.std(ddof=1) / math.sqrt(len(relative))) if len(relative) > 1 else 0.0
    return Gain(float(relative.mean()), stderr)


def config_record(config) -> dict:
    """The config dataclass as JSON-able data (tuples become lists), recorded with every result."""
    return dataclasses.asdict(config)


def write_atomic(path: Path, payload: str) -> None:
    """Write through a temp file beside ``path`` and rename: a killed run never leaves half a file."""
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as stream:
        stream.write(payload)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(staging, path)
