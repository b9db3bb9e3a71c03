"""The evaluation result record: one (model, dataset, attack, eps) result, the schema of every
result file that ``robust-w2s eval`` writes and that both reports (``eval.report`` and the study's)
read. DESIGN.md section 8 names the fields that scripts outside the project rely on."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from robust_w2s.checkpoints import atomic_write_text

REQUIRED = ("model", "dataset", "attack", "eps", "robust_acc")  # what makes a JSON file a result record


def eps_label(eps: float) -> str:
    """4/255 for eps = 4/255; the plain number when eps is not a multiple of 1/255."""
    scaled = eps * 255
    return f"{round(scaled):g}/255" if abs(scaled - round(scaled)) < 1e-6 else f"{eps:g}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")


@dataclass(frozen=True)
class EvalRecord:
    """One result; accuracies are fractions in [0, 1], eps in [0, 1] pixel units, times in seconds."""
    model: str                # the model spec as given (a checkpoint folder for trained students)
    dataset: str              # benchmark name (an embedded task without its "embedded/" prefix)
    attack: str               # "pgd", "apgd" or "autoattack"
    eps: float                # Linf radius
    eps_label: str            # eps as "4/255" (or the plain number)
    n_samples: int            # images evaluated
    seed: int                 # seed of the subset, PGD starts and AutoAttack restarts
    clean_acc: float          # top-1 on the clean images
    robust_acc: float         # correct clean AND under this attack
    worst_case_acc: float     # correct clean AND under every attack run at this eps or a smaller one (per sample)
    audits: dict              # audit name -> {"name", "passed", "detail"}
    audits_passed: bool       # every audit passed
    seconds: float            # time in this attack
    dataset_seconds: float    # time for the whole dataset (all attacks, audits)
    protocol: str | None      # the protocol whose defaults were used
    settings: dict            # the runner's EvalSettings
    benchmark: dict           # {"source", "split", "n_classes"}
    device: str               # where it ran
    versions: dict            # package versions (eval.versions)

    @property
    def failed_audits(self) -> list[str]:
        """"name: detail" of every failed audit."""
        return [f"{audit['name']}: {audit['detail']}" for audit in self.audits.values() if not audit["passed"]]

    @property
    def file_name(self) -> str:
        return f"{_slug(self.model)}__{_slug(self.dataset)}__{self.attack}__eps{_slug(self.eps_label)}.json"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EvalRecord":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

    def write(self, folder: Path) -> Path:
        """Write this record as ``folder/<model>__<dataset>__<attack>__eps<eps>.json`` atomically."""
        path = Path(folder) / self.file_name
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))
        return path


# Columns of results.csv: the record's scalar fields.
CSV_FIELDS = tuple(f.name for f in dataclasses.fields(EvalRecord) if f.type in ("str", "float", "int", "bool"))


def load_records(folder: str | Path) -> list[EvalRecord]:
    """Every result record in ``folder`` (other JSON files are ignored), in file-name order."""
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and set(REQUIRED) <= data.keys():
            records.append(EvalRecord.from_dict(data))
    return records
