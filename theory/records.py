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

ROUND_OFF = 1e-9     # relative error differences below this are floating-point noise, not gains
ERROR_FLOOR = 1e-12  # errors below this (relative to the largest) are zero up to round-off


@dataclass(frozen=True)
class Prediction:
    """One prediction of a paper, checked on one run.

    claim: the prediction in words, with the paper's section; holds: the verdict on this run;
    evidence: the numbers it rests on and the threshold used (thresholds are ours, and say so).
    """
    claim: str
    holds: bool
    evidence: str
    partly: bool = False   # does not hold in full, but part of it does (the evidence says which)

    @property
    def verdict(self) -> str:
        return "holds here" if self.holds else "partly holds here" if self.partly else "does not hold here"


@dataclass(frozen=True)
class Gain:
    """The student's relative improvement over its teacher, (teacher - student) / teacher: its mean
    over seeds and the standard error of that mean."""
    mean: float
    stderr: float

    count: int = 2           # seeds behind the mean: one seed gives no standard error

    @property
    def testable(self) -> bool:
        return self.count >= 2 and math.isfinite(self.mean)

    def significant(self, z: float) -> bool:
        """The mean exceeds z standard errors, and round-off: a student that reproduces its teacher
        (lambda_S = 0 with m > d) differs from it by about 1e-16. Never with one seed."""
        return self.testable and self.mean > max(z * self.stderr, ROUND_OFF)

    def __str__(self) -> str:
        if not self.testable:
            return f"{self.mean:+.1%} (one seed: no standard error)"
        return f"{self.mean:+.1%} +- {self.stderr:.1%}"


def gain(teacher: Sequence[float], student: Sequence[float]) -> Gain:
    """The Gain of ``student`` over ``teacher``, paired by seed (equal-length sequences of errors)."""
    teacher, student = np.asarray(teacher, dtype=float), np.asarray(student, dtype=float)
    # Errors at round-off level (a noiseless teacher at lambda* = 0 reaches ~1e-30) have no meaningful
    # relative difference: they count as equal.
    floor = ERROR_FLOOR * max(1.0, float(np.abs(teacher).max(initial=0.0)))
    tiny = (np.abs(teacher) < floor) & (np.abs(student) < floor)
    relative = np.where(tiny, 0.0, (teacher - student) / np.where(tiny, 1.0, teacher))
    stderr = float(relative.std(ddof=1) / math.sqrt(len(relative))) if len(relative) > 1 else math.nan
    return Gain(float(relative.mean()), stderr, len(relative))


def config_record(config) -> dict:
    """The config dataclass as JSON-able data (tuples become lists), recorded with every result."""
    return dataclasses.asdict(config)


def write_atomic(path: Path, payload: str) -> None:
    """Write through a temp file beside ``path`` and rename: a killed run never leaves half a file."""
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o666 & ~umask)   # mkstemp creates 0600; the result is an ordinary file
    with os.fdopen(handle, "w") as stream:
        stream.write(payload)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(staging, path)
