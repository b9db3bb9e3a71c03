"""What every theory experiment hands back, and how it is written down.

A ``Prediction`` is one statement of a paper, the verdict of this run ("holds / does not hold here")
and the numbers that decided it, so that the report never states a verdict without its evidence.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


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
