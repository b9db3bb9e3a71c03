"""Aggregate the result records of an output folder into Markdown, CSV and a PNG plot."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from .records import CSV_FIELDS, EvalRecord, load_records
from .registry import ATTACKS


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown_table(records: list[EvalRecord]) -> str:
    """Per model: one row per dataset with clean, each attack@eps and the worst case per eps."""
    lines = []
    by_model = defaultdict(list)
    for record in records:
        by_model[record.model].append(record)
    for model, rows in by_model.items():
        columns = sorted({(r.eps, r.attack) for r in rows}, key=lambda c: (c[0], ATTACKS.index(c[1])))
        eps_values = sorted({r.eps for r in rows})
        labels = {r.eps: r.eps_label for r in rows}
        header = ["dataset", "n", "clean"] + [f"{a} @ {labels[e]}" for e, a in columns] + \
                 [f"worst @ {labels[e]}" for e in eps_values]
        lines += [f"### {model}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        datasets = list(dict.fromkeys(r.dataset for r in rows))
        cell = {(r.dataset, r.eps, r.attack): r for r in rows}
        averages = defaultdict(list)
        for dataset in datasets:
            first = next(r for r in rows if r.dataset == dataset)
            values = [first.clean_acc] + [cell[dataset, e, a].robust_acc if (dataset, e, a) in cell
                                          else float("nan") for e, a in columns]
            values += [next(r.worst_case_acc for r in rows if r.dataset == dataset and r.eps == e)
                       for e in eps_values]
            for i, value in enumerate(values):
                averages[i].append(value)
            lines.append(f"| {dataset} | {first.n_samples} | " + " | ".join(_pct(v) for v in values) + " |")
        if len(datasets) > 1:
            lines.append("| **average** | | " + " | ".join(_pct(sum(v) / len(v)) for v in averages.values()) + " |")
        lines.append("")
    return "\n".join(lines)


def audit_section(records: list[EvalRecord]) -> str:
    failed = [(r, a) for r in records for a in r.audits.values() if not a["passed"]]
    if not failed:
        names = sorted({name for r in records for name in r.audits})
        return f"All audits passed on {len(records)} results ({', '.join(names)})."
    lines = [f"**{len(failed)} audit failures** (results from a weak or masked attack are not trustworthy):", ""]
    lines += [f"- {r.model} / {r.dataset} / {r.attack} @ {r.eps_label}: {a['name']}: {a['detail']}"
              for r, a in failed]
    return "\n".join(lines)


def plot_eps_curves(curves: dict[str, tuple[list[float], list[float], list[float] | None]], path: Path, *,
                    title: str, ylabel: str = "robust accuracy (%)", mark_eps: float | None = None) -> None:
    """Accuracy (fractions) against epsilon, one line per label: ``curves[label] = (eps values,
    means, stds or None)``; eps 0 is the clean accuracy. A std gives a shaded band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for label, (eps_values, means, stds) in curves.items():
        x = [255 * eps for eps in eps_values]
        y = [100 * mean for mean in means]
        line, = axis.plot(x, y, marker="o", label=label)
        if stds is not None:
            axis.fill_between(x, [m - 100 * s for m, s in zip(y, stds)], [m + 100 * s for m, s in zip(y, stds)],
                              color=line.get_color(), alpha=0.15)
    if mark_eps is not None:
        axis.axvline(255 * mark_eps, color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("ε (x/255, L∞); 0 = clean")
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_robust_vs_eps(records: list[EvalRecord], path: Path) -> None:
    """Worst-case robust accuracy (averaged over datasets) against epsilon, one line per model."""
    by_model = defaultdict(lambda: defaultdict(dict))
    for r in records:
        by_model[r.model][r.eps][r.dataset] = r.worst_case_acc
        by_model[r.model][0.0][r.dataset] = r.clean_acc
    curves = {}
    for model, by_eps in by_model.items():
        eps_values = sorted(by_eps)
        curves[model] = (eps_values, [sum(by_eps[e].values()) / len(by_eps[e]) for e in eps_values], None)
    plot_eps_curves(curves, path, title="worst case over attacks, mean over datasets")


def write_report(output_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``results.csv`` and ``robust_vs_eps.png`` for every result in the folder."""
    output_dir = Path(output_dir)
    records = load_records(output_dir)
    paths = {"markdown": output_dir / "report.md", "csv": output_dir / "results.csv",
             "plot": output_dir / "robust_vs_eps.png"}
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(record.to_dict() for record in records)
    body = ["# Zero-shot adversarial evaluation", "", "Accuracy in %. Robust accuracy counts a sample only if it "
            "is correct clean and under the attack; *worst* is the per-sample worst case over all attacks run.",
            "", markdown_table(records), "## Audits", "", audit_section(records), ""]
    paths["markdown"].write_text("\n".join(body))
    plot_robust_vs_eps(records, paths["plot"])
    return paths
