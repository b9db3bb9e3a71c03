"""The world's summary table: clean zero-shot and PGD-20 accuracy of its three models."""
from __future__ import annotations

from ..layout import WORLD_MODELS


def world_table(record: dict) -> str:
    """A plain-text table: one row per task, clean / PGD-20 accuracy per model, then averages."""
    measured, tasks = record["measured"], record["tasks"]
    eps = record["epsilon"] * 255
    width = max(len(t) for t in tasks + ["average (zero-shot)"]) + 2
    header = f"{'task':<{width}}" + "".join(f"{m + ' clean/pgd20':>24}" for m in WORLD_MODELS)
    lines = [f"Embedded world: zero-shot accuracy (%), PGD-20 at eps {eps:g}/255, "
             f"alignment task '{record['alignment_task']}'", header, "-" * len(header)]

    def row(label: str, task_names: list[str]) -> str:
        cells = []
        for model in WORLD_MODELS:
            clean = sum(measured[model][t]["clean_acc"] for t in task_names) / len(task_names)
            robust = sum(measured[model][t]["pgd20_acc"] for t in task_names) / len(task_names)
            cells.append(f"{100 * clean:>16.1f} /{100 * robust:>5.1f}")
        return f"{label:<{width}}" + "".join(cells)

    for task in tasks:
        marker = " *" if task == record["alignment_task"] else ""
        lines.append(row(task + marker, [task]))
    lines.append("-" * len(header))
    lines.append(row("average (all)", tasks))
    lines.append(row("average (zero-shot)", [t for t in tasks if t != record["alignment_task"]]))
    lines.append("* alignment task (its unlabelled split is what students are aligned on)")
    return "\n".join(lines)
