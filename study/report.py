"""The study's report, built from ``results.json`` alone: Tables A, B and C, PGR, the paper's four
claims checked against the numbers, and two plots. ``build_markdown(results)`` is a pure function
of that file, so the committed report can be rebuilt (and is, by a test) from the committed JSON.

Accuracies are in %; "robust" is the per-sample worst case of PGD-20 and APGD-CE at the world's
epsilon (the main evaluation's attacks) unless a column says PGD-20 or AutoAttack; "ID" is the
alignment task (in distribution), "zero-shot" the mean over the other tasks.
Every "±" is the standard deviation over training seeds; a model evaluated once shows no ±.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from robust_w2s.checkpoints import atomic_write_text
from robust_w2s.errors import UserError
from robust_w2s.eval.report import plot_eps_curves

from .claims import claims
from .plan import (CEILING, CURVE_MODELS, MIX_RUN, NATURAL_TEACHER, SEED_METHODS, TABLE_B, TABLE_C, TABLE_D_METHODS,
                   TABLE_D_SPLITS)
from .results import MIN_PGR_GAP, Results, pgr

PLOTS = {"eps": "results-robust-vs-eps.png", "scatter": "results-clean-vs-robust.png"}


# --- tables ---------------------------------------------------------------------------------------

def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def _accuracy_columns(results: Results, group: str) -> list[str]:
    return [str(results.stat(group, metric, scope)) for scope in ("ID", "zero-shot") for metric in ("clean", "worst")]


def table_a(results: Results) -> list[str]:
    header = ["weak teacher", "model", "ID clean", "ID robust", "zero-shot clean", "zero-shot robust"]
    rows = []
    for teacher, vanilla, adversarial in (("weak", "vanilla-w2s-natural", "adv-w2s-base-natural"),
                                          ("weak-robust", "vanilla-w2s", "adv-w2s-base")):
        name = "natural" if teacher == "weak" else "robust (TeCoA)"
        rows.append([name, "the teacher itself", *_accuracy_columns(results, teacher)])
        rows.append([name, "vanilla W2S (clean images)", *_accuracy_columns(results, vanilla)])
        rows.append([name, "adversarial W2S (Eq. 5)", *_accuracy_columns(results, adversarial)])
    rows.append(["—", "strong student before alignment", *_accuracy_columns(results, "strong")])
    rows.append(["—", "TeCoA with labels (ceiling)", *_accuracy_columns(results, CEILING)])
    return _table(header, rows)


def table_b(results: Results) -> list[str]:
    header = ["model", "metric", *results.tasks, "average"]
    rows = []
    for group in TABLE_B:
        label = results.label(group)
        rows.append([label, "clean", *(str(results.stat(group, "clean", [t])) for t in results.tasks),
                     str(results.stat(group, "clean", "all"))])
        for metric, name in (("pgd", "PGD-20"), ("worst", "PGD-20 ∪ APGD-CE")):
            rows.append(["", name, *(str(results.stat(group, metric, [t])) for t in results.tasks),
                         str(results.stat(group, metric, "all"))])
        if results.has(group, "autoattack"):
            covered = results.tasks_of("autoattack")
            rows.append(["", "AutoAttack", *(str(results.stat(group, "autoattack", [t], kind="autoattack"))
                                             if t in covered else "—" for t in results.tasks),
                         str(results.stat(group, "autoattack", "all", kind="autoattack"))
                         if covered == results.tasks else "—"])
    return _table(header, rows)


def table_c(results: Results) -> list[str]:
    header = ["variant", "ID clean", "ID robust", "zero-shot clean", "zero-shot robust",
              "Δ zero-shot clean", "Δ zero-shot robust"]
    base = TABLE_C[0]
    rows = []
    for group in TABLE_C:
        deltas = ["—", "—"] if group == base else [
            _delta(results, group, base, metric) for metric in ("clean", "worst")]
        rows.append([results.label(group), *_accuracy_columns(results, group), *deltas])
    return _table(header, rows)


def _delta(results: Results, group: str, base: str, metric: str) -> str:
    difference = results.stat(group, metric, "zero-shot").mean - results.stat(base, metric, "zero-shot").mean
    return f"{100 * difference:+.1f}"


def table_pgr(results: Results) -> list[str]:
    header = ["W2S run", "teacher", "PGR clean ID", "PGR robust ID", "PGR clean zero-shot", "PGR robust zero-shot"]
    rows = []
    for group, run in results.runs.items():
        if not run["w2s"] or not results.has(group):
            continue
        cells = []
        for scope in ("ID", "zero-shot"):
            for metric in ("clean", "worst"):
                value, gap = pgr(results, group, metric, scope)
                cells.append(f"n/a (gap {100 * gap:+.1f})" if value is None else
                             f"{value.mean:.2f} ± {value.std:.2f}" if len(value.values) > 1 else f"{value.mean:.2f}")
        teacher = "natural" if run["teacher"] == NATURAL_TEACHER else "robust"
        rows.append([results.label(group).removesuffix(" ← natural teacher"), teacher, *cells])
    return _table(header, rows)


def table_d(results: Results) -> list[str]:
    """Per alignment split, each multi-teacher method clean and adversarial, against Adv-W2S and TeCoA."""
    header = ["split", "method", "student input", "ID clean", "ID robust", "zero-shot clean", "zero-shot robust"]
    rows = []
    for split, suffix in TABLE_D_SPLITS.items():
        for clean_group, adversarial_group in TABLE_D_METHODS:
            for variant, group in (("clean", clean_group), ("adversarial", adversarial_group)):
                name = group and f"{group}{suffix}"
                if name and results.has(name):
                    rows.append([f"`{split}`", results.runs[name]["label"], variant, *_accuracy_columns(results, name)])
    if not rows:
        return ["This study has no Table D runs.", ""]
    return _table(header, rows)


def table_weights(results: Results) -> list[str]:
    """RAVEN's learned weights (mean ± std over seeds) next to each teacher's accuracy on the split."""
    header = ["run", "split", "teacher", "accuracy on the split", "learned weight"]
    rows = []
    for split, suffix in TABLE_D_SPLITS.items():
        for group in (f"raven{suffix}", f"adv-raven{suffix}"):
            if not results.has(group):
                continue
            weights = results.learned_weights(group)
            for teacher, weight in weights.items():
                accuracy = results.split_accuracy(teacher, split)
                rows.append([results.runs[group]["label"], f"`{split}`", results.label(teacher),
                             "—" if accuracy is None else f"{100 * accuracy:.1f}", f"{weight:.3f}"])
    return _table(header, rows) if rows else []


def pgd_overstatement(results: Results) -> list[str]:
    """How much higher PGD-20 alone says each model's robust accuracy is than the worst case."""
    header = ["model", "PGD-20", "PGD-20 ∪ APGD-CE", "PGD-20 overstates by (points)"]
    rows = []
    for group in results.members["main"]:
        pgd, worst = results.stat(group, "pgd", "all"), results.stat(group, "worst", "all")
        rows.append([results.label(group), str(pgd), str(worst), f"{results.pgd_overstatement(group):.1f}"])
    rows.sort(key=lambda row: -float(row[-1]))
    return _table(header, rows)


# --- the document ---------------------------------------------------------------------------------

def _audits(results: Results) -> str:
    records = results.records
    failed = [r for r in records if not r.audits_passed]
    if not failed:
        return f"All soundness audits passed on all {len(records)} evaluation results."
    lines = [f"**{len(failed)} of {len(records)} results failed an audit** (treat them as unsound):"]
    lines += [f"- {r.model} / {r.dataset} / {r.attack} @ {r.eps_label}: {'; '.join(r.failed_audits)}"
              for r in failed]
    return "\n".join(lines)


def _autoattack_gap(results: Results) -> str:
    """How much lower standard AutoAttack is than PGD-20 on the same images (the AA evaluation), and
    which model it lowers most: there the attacks beyond APGD-CE find the most, so that model's
    worst case of PGD-20 and APGD-CE (every other table) flatters it most."""
    gaps = {}
    for group in TABLE_B:
        if results.has(group, "autoattack"):
            covered = results.tasks_of("autoattack")
            gaps[group] = 100 * (results.stat(group, "pgd", covered, kind="autoattack").mean
                                 - results.stat(group, "autoattack", covered, kind="autoattack").mean)
    text = ", ".join(f"{results.label(group)} {gap:.1f}" for group, gap in gaps.items())
    if len(gaps) > 2:
        top = max(gaps, key=gaps.get)
        median = statistics.median(gap for group, gap in gaps.items() if group != top)
        apgd = max(results.pgd_overstatement(group) for group in gaps)
        text += (f". The gap is largest for {results.label(top)} ({gaps[top]:.1f} points; the median of the others "
                 f"is {median:.1f}; few images, one seed, no noise estimate), while adding APGD-CE to PGD-20 lowers "
                 f"none of these models by more than {apgd:.1f} points on the main images: what AutoAttack adds "
                 "(APGD-T, FAB-T, Square) is missing from the worst case of PGD-20 and APGD-CE that the other "
                 "tables report, and may flatter that model the most")
    return text


def build_markdown(raw: dict) -> str:
    results = Results(raw)
    study, settings, world = raw["study"], results.settings, results.world
    seeds = settings["seeds"]
    kind = "quick" if settings["quick"] else "full"
    eps = round(world["epsilon"] * 255)
    steps = {entry["steps"] for entry in raw["training"].values()}
    batch_sizes = {entry["config"]["train"]["batch_size"] for entry in raw["training"].values()}
    lines = [
        "# The reference study on the embedded world",
        "",
        f"Built by `{study['command']}` ({kind} study) from `results.json` in this folder; every number "
        "below comes from that file. Rebuild this page and its plots from that file alone with "
        "`python -m robust_w2s.study.report FOLDER/results.json`.",
        "",
        f"- World: seed {world['seed']}, threat model L∞ ε = {eps}/255, alignment task `{results.alignment}`, "
        f"zero-shot tasks {', '.join(f'`{t}`' for t in results.zero_shot)}.",
        f"- Training: every run is `configs/embedded/<config>.yaml` with the same budget ({', '.join(map(str, sorted(steps)))} "
        f"steps of {', '.join(map(str, sorted(batch_sizes)))} images){' and ' + ', '.join(f'`{o}`' for o in settings['overrides']) if settings['overrides'] else ''}"
        f", seeds {', '.join(map(str, seeds))}; mean ± std over seeds.",
        f"- Evaluation: the same {settings['n_eval']} seeded images per task for every model: clean, PGD-20 "
        f"(step ε/4, one random start)"
        + (" and APGD-CE (100 steps) on what PGD-20 left robust; every *robust* column and claim is the "
           "per-sample worst case of the two (rows and columns named PGD-20 are PGD-20 alone)"
           if "apgd-ce" in results.attacks_of("main")
           else " only (this study ran no APGD-CE: its robust columns are PGD-20's)") + ". Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square 5000 queries) on "
        f"{settings['n_autoattack']} of them per task"
        f"{'' if settings['autoattack_all_tasks'] else ' on the alignment task only'}, for the Table B models, seed"
        f"{'s' if settings['autoattack_seeds'] > 1 else ''} "
        f"{', '.join(map(str, seeds[:settings['autoattack_seeds']]))}.",
        f"- Time: {study['wall_seconds'] / 60:.1f} min wall for this invocation, {study['job_seconds'] / 60:.1f} min "
        f"of job time on {study['workers']} worker(s), {study['cpu_count']} CPU(s).",
        "",
        "## Table A: where robustness comes from (paper's Table 1)",
        "",
        "Students trained from the natural weak CLIP and from its TeCoA-robust copy; ID = the alignment task.",
        "",
        *table_a(results),
        "## Table B: the defences side by side (paper's Table 2)",
        "",
        f"Per task, the strong student after each method. AutoAttack rows use the AutoAttack subset; on those "
        f"same images AutoAttack is below PGD-20 by (points, mean over tasks): {_autoattack_gap(results)}.",
        "",
        *table_b(results),
        "## Table C: the ablation of Adv-W2S (paper's Table 9)",
        "",
        "Δ: change of the zero-shot mean against the base (constant self-label weight β, no IAR).",
        "",
        *table_c(results),
        "## Table D: several weak teachers, and alignment under distribution shift",
        "",
        "Naive averaging of the world's weak teachers, RAVEN's learned combination and Selective W2SG (P(IK) "
        "re-weighting, graph-smoothed guidance), each on clean and on adversarial student inputs, against "
        "Adv-W2S and TeCoA, aligned on the alignment split and on its shifted twin (mostly outline drawings "
        "and textured backgrounds); same budget and evaluation as Tables A to C.",
        "",
        *table_d(results),
        *table_weights(results),
        "## How far PGD-20 overstates robustness",
        "",
        "Mean over every task, on the same seeded images: PGD-20 alone against the per-sample worst case of "
        "PGD-20 and APGD-CE (run on the samples PGD-20 left robust). Every robust number and claim above uses "
        "the worst case.",
        "",
        *pgd_overstatement(results),
        "## Performance gap recovered",
        "",
        "PGR = (student − weak teacher) / (TeCoA ceiling − weak teacher), per seed against the same seed's "
        f"ceiling, TeCoA with labels on the split the student aligned on. Where the ceiling is less than {100 * MIN_PGR_GAP:.0f} points above the teacher the ratio is "
        "noise and is shown as n/a with the gap.",
        "",
        *table_pgr(results),
        "## The claims on this world",
        "",
        "(a) to (d) are the paper's; (e) to (g) RAVEN's, (h) Selective W2SG's, (i) a question beyond both.",
        "",
    ]
    for claim in claims(results):
        lines += [f"- **({claim.key}) {claim.statement}: {claim.verdict}.** {claim.evidence}"]
    lines += [
        "",
        "## Plots",
        "",
        f"![robust accuracy against epsilon]({PLOTS['eps']})",
        f"![clean against robust accuracy]({PLOTS['scatter']})",
        "",
        "## Audits",
        "",
        _audits(results),
        "",
        "## What this world can and cannot tell",
        "",
        "It can show the mechanisms: whether adversarial examples in the alignment loop are what carries "
        "robustness to the student, how much of a teacher's robustness plain distillation transfers, and how "
        "each method trades clean for robust accuracy under one attack protocol with audits. It cannot rank "
        "methods at real scale: the models are tiny, the zero-shot tasks are close relatives of the alignment "
        "task (so a teacher's own adversarial training transfers to them unusually well), the students train for "
        "minutes, and AutoAttack runs on a small subset. The investigation of the claims that do not hold, with "
        "shared-budget variations applied to every method alike, is in `docs/investigation.md`.",
        "",
    ]
    return "\n".join(lines)


# --- plots ----------------------------------------------------------------------------------------

def plot_robust_vs_eps(results: Results, path: Path) -> None:
    eps_values = results.curve_eps()
    curves = {}
    for group in CURVE_MODELS:
        if not results.has(group, "curve"):
            continue
        stats = [results.stat(group, "clean", "all", kind="curve", eps=eps_values[0])]
        stats += [results.stat(group, "worst", "all", kind="curve", eps=eps) for eps in eps_values]
        curves[results.label(group)] = ([0.0, *eps_values], [s.mean for s in stats], [s.std for s in stats])
    plot_eps_curves(curves, path, title="PGD-20 against ε (band: std over seeds)",
                    ylabel="robust accuracy (%), mean over tasks", mark_eps=results.world["epsilon"])


def plot_clean_vs_robust(results: Results, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5))
    colours = plt.get_cmap("tab20").colors + plt.get_cmap("tab20b").colors  # 40: one per model of the study
    seed_configs = {config for pair in SEED_METHODS for config in pair} | {MIX_RUN}
    for index, group in enumerate(results.members["main"]):
        x, y = results.stat(group, "clean", "zero-shot"), results.stat(group, "worst", "zero-shot")
        run = results.runs.get(group)
        marker = "s" if run is None else "D" if run["config"] in seed_configs else "o" if run["w2s"] else "^"
        axis.errorbar(100 * x.mean, 100 * y.mean, xerr=100 * x.std, yerr=100 * y.std, fmt=marker, capsize=2,
                      color=colours[index % len(colours)], markersize=7, label=results.label(group))
    axis.set_xlabel("zero-shot clean accuracy (%)")
    axis.set_ylabel(f"zero-shot robust accuracy at {round(255 * results.world['epsilon'])}/255 (%)")
    axis.set_title("robust: per-sample worst case of PGD-20 and APGD-CE; error bars: std over seeds\n"
                   "■ world models   ● weak-to-strong   ◆ several teachers (Table D)   ▲ other defences", fontsize=8)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(raw: dict, report_dir: str | Path) -> Path:
    """results.json, results.md and the two plots in ``report_dir``; returns the Markdown's path."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(report_dir / "results.json", json.dumps(raw, indent=1) + "\n")
    results = Results(raw)
    plot_robust_vs_eps(results, report_dir / PLOTS["eps"])
    plot_clean_vs_robust(results, report_dir / PLOTS["scatter"])
    path = report_dir / "results.md"
    atomic_write_text(path, build_markdown(raw))
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m robust_w2s.study.report FOLDER/results.json``: rebuild the report next to it."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m robust_w2s.study.report",
                                     description="Rebuild results.md and the plots from a study's results.json.")
    parser.add_argument("results", help="a results.json written by `robust-w2s demo`")
    source = Path(parser.parse_args(argv).results)
    try:
        if not source.is_file():
            raise UserError(f"no such file: {source}")
        try:
            raw = json.loads(source.read_text())
        except ValueError as error:
            raise UserError(f"{source}: not JSON ({error})") from None
        print(write_report(raw, source.parent))
    except UserError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
