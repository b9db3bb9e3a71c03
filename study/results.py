"""Look-ups into a study's ``results.json``: one number per (model, evaluation, metric, tasks), per seed.

Each record of the file is ``{"model", "group", "seed", "kind", "result"}``: the study's model id
(``"adv-w2s/seed1"``), what tables aggregate over seeds (``"adv-w2s"``), the training seed, the
evaluation job's kind (``"main"``, ``"autoattack"``, ``"curve"``) and the eval suite's own
:class:`~robust_w2s.eval.records.EvalRecord`, as ``robust-w2s eval`` wrote it.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

from robust_w2s.errors import UserError
from robust_w2s.eval.records import EvalRecord

from robust_w2s.layout import EMBEDDED

from .plan import CEILING, NATURAL_TEACHER, WORLD_LABELS

MIN_PGR_GAP = 0.02  # PGR needs a ceiling this far (2 points) above the teacher, else it measures noise


@dataclass(frozen=True)
class Stat:
    """A value per training seed (fractions); formatted as mean ± std in %."""
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def sem(self) -> float:
        return self.std / math.sqrt(len(self.values))

    def __str__(self) -> str:
        if len(self.values) > 1:
            return f"{100 * self.mean:.1f} ± {100 * self.std:.1f}"
        return f"{100 * self.mean:.1f}"


class Results:
    """Look-ups into results.json: one number per (model, evaluation, metric, tasks), per seed."""

    def __init__(self, results: dict):
        self.raw = results
        self.world = results["world"]
        self.settings = results["study"]["settings"]
        self.runs = {run["name"]: run for run in results["study"]["runs"]}
        self.alignment = self.world["alignment_task"]
        self.tasks = list(self.world["tasks"])
        self.zero_shot = [task for task in self.tasks if task != self.alignment]
        self.scopes = {"ID": [self.alignment], "zero-shot": self.zero_shot, "all": self.tasks}
        self.records: list[EvalRecord] = []
        self.index: dict[tuple, EvalRecord] = {}
        self.members = defaultdict(dict)  # kind -> group -> [model ids, seed order]
        if results["records"] and "result" not in results["records"][0]:
            raise UserError("results.json written before robust-w2s kept whole eval records (issue 9): "
                            "rerun `robust-w2s demo` with the same --output-dir; finished jobs are reused")
        for entry in results["records"]:
            record = EvalRecord.from_dict(entry["result"])
            self.records.append(record)
            self.index[entry["kind"], entry["model"], record.dataset, record.attack, record.eps] = record
            self.members[entry["kind"]].setdefault(entry["group"], [])
            if entry["model"] not in self.members[entry["kind"]][entry["group"]]:
                self.members[entry["kind"]][entry["group"]].append(entry["model"])

    def label(self, group: str) -> str:
        if group in WORLD_LABELS:
            return WORLD_LABELS[group]
        run = self.runs[group]
        return (run["label"] + (" ← natural teacher" if run["teacher"] == NATURAL_TEACHER else "")
                + (f" on `{run['split']}`" if run.get("split") else ""))

    def _trainings(self, group: str) -> list[dict]:
        return [self.raw["training"][model] for model in self.members["main"][group]]

    def teachers(self, group: str) -> list[str]:
        """The world models a multi-teacher run combined, in its order (its config's ``teachers``)."""
        return [spec.removeprefix(EMBEDDED) for spec in self._trainings(group)[0]["config"]["teachers"]]

    def learned_weights(self, group: str) -> dict[str, float]:
        """RAVEN's final weight of each teacher (world model name), mean over seeds."""
        runs = [training["teacher_weights"] for training in self._trainings(group)]
        return {spec.removeprefix(EMBEDDED): statistics.fmean(run[spec] for run in runs) for spec in runs[0]}

    def split_accuracy(self, model: str, split: str) -> float | None:
        """A world model's clean accuracy on an alignment split, as world.json measured it (None if not)."""
        return ((self.world.get("measured") or {}).get(model, {}).get(split) or {}).get("clean_acc")

    def pik(self, group: str) -> str:
        """P(IK)'s held-out precision and recall over seeds, as text, with a warning where it is no
        better than calling every image known (recall 1 and precision the known rate)."""
        records = [training["pik"] for training in self._trainings(group)]
        parts = []
        for key in ("precision", "recall"):
            values = [r[key] for r in records if r[key] is not None]
            parts.append(f"{key} {Stat(tuple(values))}%" if values else f"{key} undefined")
        knows = Stat(tuple(r["knows_rate"] for r in records))
        text = (", ".join(parts) + f" on {records[0]['n_holdout']} held-out of {records[0]['n_labels']} labelled "
                f"images (it reads no other label; {knows}% of them known)")
        precision = [r["precision"] for r in records if r["precision"] is not None]
        recall = [r["recall"] for r in records if r["recall"] is not None]
        # Its precision not above the base rate of known images, at (almost) full recall.
        trivial = bool(precision and recall) and (statistics.fmean(precision) - knows.mean < 0.03
                                                  and statistics.fmean(recall) >= 0.98)
        if trivial:
            text += (": no better than calling every image known, so the student follows its own labels almost "
                     "everywhere and the (graph-smoothed) teacher almost nowhere")
        return text

    def pgd_overstatement(self, group: str) -> float:
        """Points by which PGD-20 alone exceeds the worst case (PGD-20 ∪ APGD-CE), mean over every task."""
        return 100 * (self.stat(group, "pgd", "all").mean - self.stat(group, "worst", "all").mean)

    @property
    def single_seed(self) -> bool:
        """One training seed per run: no noise estimate over seeds."""
        return len(self.raw["study"]["settings"]["seeds"]) == 1

    def has(self, group: str, kind: str = "main") -> bool:
        return bool(self.members[kind].get(group))

    def value(self, model: str, kind: str, metric: str, tasks: list[str], *, eps: float | None = None) -> float:
        """Mean over ``tasks`` of one model's metric: "clean", an attack's robust accuracy ("pgd",
        "autoattack"), or "worst": the per-sample worst case over every attack the evaluation ran."""
        eps = self.world["epsilon"] if eps is None else eps
        attack = "autoattack" if metric == "autoattack" else "pgd"
        rows = [self.index[kind, model, task, attack, eps] for task in tasks]
        field = {"clean": "clean_acc", "worst": "worst_case_acc"}.get(metric, "robust_acc")
        return statistics.fmean(getattr(row, field) for row in rows)

    def stat(self, group: str, metric: str, scope: str | list[str], *, kind: str = "main",
             eps: float | None = None) -> Stat:
        tasks = self.scopes[scope] if isinstance(scope, str) else scope
        return Stat(tuple(self.value(m, kind, metric, tasks, eps=eps) for m in self.members[kind][group]))

    def per_seed(self, group: str, metric: str, scope: str) -> list[float]:
        return list(self.stat(group, metric, scope).values)

    def tasks_of(self, kind: str) -> list[str]:
        """The tasks an evaluation covered, in the world's order."""
        covered = {task for (k, _, task, *_) in self.index if k == kind}
        return [task for task in self.tasks if task in covered]

    def attacks_of(self, kind: str) -> set[str]:
        """The attacks an evaluation ran."""
        return {attack for (k, _, _, attack, _) in self.index if k == kind}

    def curve_eps(self) -> list[float]:
        return sorted({eps for (kind, *_, eps) in self.index if kind == "curve"})


def pgr(results: Results, group: str, metric: str, scope: str) -> tuple[Stat | None, float]:
    """PGR = (student - teacher) / (ceiling - teacher) per seed (ceiling: TeCoA with labels on the
    student's alignment split, same seed); (None, gap) when the ceiling is not at least MIN_PGR_GAP
    above the teacher on some seed."""
    run = results.runs[group]
    teacher = results.stat("weak" if run["teacher"] == NATURAL_TEACHER else "weak-robust", metric, scope).mean
    ceiling = next(name for name, other in results.runs.items()
                   if other["config"] == CEILING and other.get("split", "") == run.get("split", ""))
    students, ceilings = results.per_seed(group, metric, scope), results.per_seed(ceiling, metric, scope)
    gaps = [ceiling - teacher for ceiling in ceilings]
    if min(gaps) < MIN_PGR_GAP:
        return None, statistics.fmean(gaps)
    return Stat(tuple((s - teacher) / gap for s, gap in zip(students, gaps))), statistics.fmean(gaps)
