"""The world's summary table: clean zero-shot and PGD-20 accuracy of its models, and its build time."""
from __future__ import annotations

from ..layout import WORLD_MODELS


def world_table(record: dict) -> str:
    """A plain-text table: one row per task (clean / PGD-20 accuracy per model), the averages, one row
    per alignment split (clean accuracy), then the seconds each build stage took."""
    measured, tasks, splits = record["measured"], record["tasks"], record["alignment_splits"]
    eps = record["epsilon"] * 255
    labels = [t + (" *" if t == record["alignment_task"] else "") for t in tasks] + [s + " (clean)" for s in splits]
    width = max(len(label) for label in labels + ["average (zero-shot)"]) + 2
    cell = max(len("clean/pgd20"), *(len(m) for m in WORLD_MODELS)) + 3
    header = f"{'':<{width}}" + "".join(f"{m:>{cell}}" for m in WORLD_MODELS)
    lines = [f"Embedded world: zero-shot accuracy (%), PGD-20 at eps {eps:g}/255, "
             f"alignment task '{record['alignment_task']}'", header,
             f"{'task':<{width}}" + f"{'clean/pgd20':>{cell}}" * len(WORLD_MODELS), "-" * len(header)]

    def row(label: str, task_names: list[str], robust: bool = True) -> str:
        cells = []
        for model in WORLD_MODELS:
            clean = sum(measured[model][t]["clean_acc"] for t in task_names) / len(task_names)
            text = f"{100 * clean:.1f}"
            if robust:
                text += f" /{100 * sum(measured[model][t]['pgd20_acc'] for t in task_names) / len(task_names):>5.1f}"
            cells.append(f"{text:>{cell}}")
        return f"{label:<{width}}" + "".join(cells)

    for task, label in zip(tasks, labels):
        lines.append(row(label, [task]))
    lines.append("-" * len(header))
    lines.append(row("average (all)", tasks))
    lines.append(row("average (zero-shot)", [t for t in tasks if t != record["alignment_task"]]))
    lines.append("-" * len(header))
    lines += [row(label, [split], robust=False) for split, label in zip(splits, labels[len(tasks):])]
    lines.append("* alignment task (its unlabelled splits are what students are aligned on)")
    seconds = record["build_seconds"]
    lines.append(f"build seconds (as each stage was built): {sum(seconds.values()):.0f} = "
                 + ", ".join(f"{stage} {s:.0f}" for stage, s in seconds.items()))
    return "\n".join(lines)
