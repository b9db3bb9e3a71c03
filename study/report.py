"""The study's report, built from ``results.json`` alone: Tables A, B and C, PGR, the paper's four
claims checked against the numbers, and two plots. ``build_markdown(results)`` is a pure function
of that file, so the committed report can be rebuilt (and is, by a test) from the committed JSON.

Accuracies are in %; "robust" is PGD-20 at the world's epsilon unless a column says AutoAttack;
"ID" is the alignment task (in distribution), "zero-shot" the mean over the other tasks.
Every "±" is the standard deviation over training seeds; a model evaluated once shows no ±.
"""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from eval.report import plot_eps_curves
from robust_w2s.checkpoints import atomic_write_text

from .plan import CEILING, CURVE_MODELS, NATURAL_TEACHER, TABLE_B, TABLE_C, WORLD_LABELS

MIN_PGR_GAP = 0.02  # PGR needs a ceiling this far (2 points) above the teacher, else it measures noise
PLOTS = {"eps": "results-robust-vs-eps.png", "scatter": "results-clean-vs-robust.png"}


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
        self.index = {}
        self.members = defaultdict(dict)  # kind -> group -> [model ids, seed order]
        for record in results["records"]:
            self.index[record["kind"], record["model"], record["task"], record["attack"], record["eps"]] = record
            self.members[record["kind"]].setdefault(record["group"], [])
            if record["model"] not in self.members[record["kind"]][record["group"]]:
                self.members[record["kind"]][record["group"]].append(record["model"])

    def label(self, group: str) -> str:
        if group in WORLD_LABELS:
            return WORLD_LABELS[group]
        run = self.runs[group]
        return run["label"] + (" ← natural teacher" if run["teacher"] == NATURAL_TEACHER else "")

    def has(self, group: str, kind: str = "main") -> bool:
        return bool(self.members[kind].get(group))

    def value(self, model: str, kind: str, metric: str, tasks: list[str], eps: float | None = None) -> float:
        """Mean over ``tasks`` of one model's metric: "clean", an attack's robust accuracy, or "worst"."""
        eps = self.world["epsilon"] if eps is None else eps
        attack = "autoattack" if metric == "autoattack" else "pgd"
        rows = [self.index[kind, model, task, attack, eps] for task in tasks]
        field = {"clean": "clean_acc", "worst": "worst_case_acc"}.get(metric, "robust_acc")
        return statistics.fmean(row[field] for row in rows)

    def stat(self, group: str, metric: str, scope: str | list[str], kind: str = "main",
             eps: float | None = None) -> Stat:
        tasks = self.scopes[scope] if isinstance(scope, str) else scope
        return Stat(tuple(self.value(m, kind, metric, tasks, eps) for m in self.members[kind][group]))

    def per_seed(self, group: str, metric: str, scope: str) -> list[float]:
        return list(self.stat(group, metric, scope).values)

    def tasks_of(self, kind: str) -> list[str]:
        """The tasks an evaluation covered, in the world's order."""
        covered = {task for (k, _, task, *_) in self.index if k == kind}
        return [task for task in self.tasks if task in covered]

    def curve_eps(self) -> list[float]:
        return sorted({eps for (kind, *_, eps) in self.index if kind == "curve"})


# --- tables ---------------------------------------------------------------------------------------

def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def _accuracy_columns(results: Results, group: str) -> list[str]:
    return [str(results.stat(group, metric, scope)) for scope in ("ID", "zero-shot") for metric in ("clean", "pgd")]


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
        rows.append(["", "PGD-20", *(str(results.stat(group, "pgd", [t])) for t in results.tasks),
                     str(results.stat(group, "pgd", "all"))])
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
            _delta(results, group, base, metric) for metric in ("clean", "pgd")]
        rows.append([results.label(group), *_accuracy_columns(results, group), *deltas])
    return _table(header, rows)


def _delta(results: Results, group: str, base: str, metric: str) -> str:
    difference = results.stat(group, metric, "zero-shot").mean - results.stat(base, metric, "zero-shot").mean
    return f"{100 * difference:+.1f}"


def pgr(results: Results, group: str, metric: str, scope: str) -> tuple[Stat | None, float]:
    """PGR = (student - teacher) / (ceiling - teacher) per seed (ceiling: TeCoA, same seed);
    (None, gap) when the ceiling is not at least MIN_PGR_GAP above the teacher on some seed."""
    teacher = results.stat("weak" if results.runs[group]["teacher"] == NATURAL_TEACHER else "weak-robust",
                           metric, scope).mean
    students, ceilings = results.per_seed(group, metric, scope), results.per_seed(CEILING, metric, scope)
    gaps = [ceiling - teacher for ceiling in ceilings]
    if min(gaps) < MIN_PGR_GAP:
        return None, statistics.fmean(gaps)
    return Stat(tuple((s - teacher) / gap for s, gap in zip(students, gaps))), statistics.fmean(gaps)


def table_pgr(results: Results) -> list[str]:
    header = ["W2S run", "teacher", "PGR clean ID", "PGR robust ID", "PGR clean zero-shot", "PGR robust zero-shot"]
    rows = []
    for group, run in results.runs.items():
        if not run["w2s"] or not results.has(group):
            continue
        cells = []
        for scope in ("ID", "zero-shot"):
            for metric in ("clean", "pgd"):
                value, gap = pgr(results, group, metric, scope)
                cells.append(f"n/a (gap {100 * gap:+.1f})" if value is None else
                             f"{value.mean:.2f} ± {value.std:.2f}" if len(value.values) > 1 else f"{value.mean:.2f}")
        teacher = "natural" if run["teacher"] == NATURAL_TEACHER else "robust"
        rows.append([run["label"], teacher, *cells])
    return _table(header, rows)


# --- the paper's claims ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    verdict: str          # "holds", "partly", "does not hold"
    evidence: str


def _beyond_noise(a: Stat, b: Stat) -> float:
    """Two standard errors of the difference of two seed means (0 with one seed: no estimate)."""
    return 2 * math.sqrt(a.sem ** 2 + b.sem ** 2)


def claims(results: Results) -> list[Claim]:
    zs = "zero-shot"
    robust = lambda group: results.stat(group, "pgd", zs)  # noqa: E731 (a local shorthand)
    clean = lambda group: results.stat(group, "clean", zs)  # noqa: E731
    found = []

    # (a) vanilla W2S from the robust teacher: share of the teacher's robustness advantage it gains.
    strong, teacher, vanilla = robust("strong"), robust("weak-robust"), robust("vanilla-w2s")
    advantage = teacher.mean - strong.mean
    share = (vanilla.mean - strong.mean) / advantage if advantage >= MIN_PGR_GAP else None
    found.append(Claim(
        "a", "vanilla W2S transfers at most a third of the teacher's robustness",
        "cannot be tested" if share is None else "holds" if share <= 1 / 3 else "does not hold",
        f"zero-shot robust: strong {strong}, robust teacher {teacher}, vanilla W2S student {vanilla}: "
        + ("the teacher is not more robust than the strong model, so there is nothing to transfer."
           if share is None else
           f"it gains {share:.0%} of the teacher's advantage over the strong model (claim: at most 33%).")))

    # (b) adversarial W2S from the natural teacher: robustness beyond its start and its teacher.
    natural, adversarial = robust("weak"), robust("adv-w2s-base-natural")
    margin = _beyond_noise(adversarial, strong)
    above_start = adversarial.mean - strong.mean > margin
    above_teacher = adversarial.mean > natural.mean
    found.append(Claim(
        "b", "adversarial W2S transfers robustness even from a non-robust teacher",
        "holds" if above_start and above_teacher else "partly" if above_start else "does not hold",
        f"zero-shot robust: strong {strong}, natural teacher {natural}, adversarial W2S student from it "
        f"{adversarial} ({100 * (adversarial.mean - strong.mean):+.1f} points over the strong model; "
        f"{'above' if above_teacher else 'not above'} its teacher); from the robust teacher the same "
        f"objective reaches {robust('adv-w2s-base')}."))

    # (c) EUR and IAR each improve over the base (clean and robust, zero-shot).
    parts, verdicts = [], []
    base_clean, base_robust = clean("adv-w2s-base"), robust("adv-w2s-base")
    for name, group in (("EUR", "adv-w2s-eur"), ("IAR", "adv-w2s-iar")):
        d_clean, d_robust = clean(group).mean - base_clean.mean, robust(group).mean - base_robust.mean
        noise = (_beyond_noise(clean(group), base_clean), _beyond_noise(robust(group), base_robust))
        better = [d > n for d, n in zip((d_clean, d_robust), noise)]
        worse = [d < -n for d, n in zip((d_clean, d_robust), noise)]
        verdicts.append("holds" if any(better) and not any(worse) and min(d_clean, d_robust) >= 0
                        else "partly" if any(better) else "does not hold")
        parts.append(f"+{name}: clean {100 * d_clean:+.1f} (noise ±{100 * noise[0]:.1f}), robust "
                     f"{100 * d_robust:+.1f} (noise ±{100 * noise[1]:.1f}) points → {verdicts[-1]}")
    overall = "holds" if set(verdicts) == {"holds"} else "does not hold" if set(verdicts) == {"does not hold"} \
        else "partly"
    found.append(Claim("c", "EUR and IAR each improve over the base", overall,
                       f"zero-shot, against the base {base_clean} clean / {base_robust} robust; noise = two "
                       "standard errors of the difference over seeds: " + "; ".join(parts) + "."))

    # (d) the full student against its robust teacher, on the zero-shot tasks.
    student_clean, student_robust = clean("adv-w2s"), robust("adv-w2s")
    teacher_clean = clean("weak-robust")
    wins = [student_robust.mean > teacher.mean, student_clean.mean > teacher_clean.mean]
    found.append(Claim(
        "d", "the student beats its robust weak teacher in zero-shot robust accuracy, with higher clean accuracy",
        "holds" if all(wins) else "partly" if any(wins) else "does not hold",
        f"zero-shot clean / robust: Adv-W2S student {student_clean} / {student_robust}, robust teacher "
        f"{teacher_clean} / {teacher}; TeCoA with labels {clean(CEILING)} / {robust(CEILING)}."))
    return found


# --- the document ---------------------------------------------------------------------------------

def _audits(results: Results) -> str:
    records = results.raw["records"]
    failed = [r for r in records if not r["audits_passed"]]
    if not failed:
        return f"All soundness audits passed on all {len(records)} evaluation results."
    lines = [f"**{len(failed)} of {len(records)} results failed an audit** (treat them as unsound):"]
    lines += [f"- {r['model']} / {r['task']} / {r['attack']} @ {r['eps_label']}: {'; '.join(r['failed_audits'])}"
              for r in failed]
    return "\n".join(lines)


def _autoattack_gap(results: Results) -> str:
    """How much lower standard AutoAttack is than PGD-20 on the same images (the AA evaluation)."""
    gaps = []
    for group in TABLE_B:
        if results.has(group, "autoattack"):
            covered = results.tasks_of("autoattack")
            gap = (results.stat(group, "pgd", covered, kind="autoattack").mean
                   - results.stat(group, "autoattack", covered, kind="autoattack").mean)
            gaps.append(f"{results.label(group)} {100 * gap:.1f}")
    return ", ".join(gaps)


def build_markdown(raw: dict) -> str:
    results = Results(raw)
    study, settings, world = raw["study"], results.settings, results.world
    seeds = settings["seeds"]
    kind = "quick" if settings["quick"] else "full"
    eps = round(world["epsilon"] * 255)
    steps = {entry["steps"] for entry in raw["training"].values()}
    lines = [
        "# The reference study on the embedded world",
        "",
        f"Built by `{study['command']}` ({kind} study) from `results.json` in this folder; every number "
        "below comes from that file. Rebuild this page and its plots from that file alone with "
        "`python -m study.report FOLDER/results.json`.",
        "",
        f"- World: seed {world['seed']}, threat model L∞ ε = {eps}/255, alignment task `{results.alignment}`, "
        f"zero-shot tasks {', '.join(f'`{t}`' for t in results.zero_shot)}.",
        f"- Training: every run is `configs/embedded/<config>.yaml` with the same budget ({', '.join(map(str, sorted(steps)))} "
        f"steps of 64 images){' and ' + ', '.join(f'`{o}`' for o in settings['overrides']) if settings['overrides'] else ''}"
        f", seeds {', '.join(map(str, seeds))}; mean ± std over seeds.",
        f"- Evaluation: the same {settings['n_eval']} seeded images per task for every model: clean and PGD-20 "
        f"(step ε/4, one random start). Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square 5000 queries) on "
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
        "## Performance gap recovered",
        "",
        "PGR = (student − weak teacher) / (TeCoA ceiling − weak teacher), per seed against the same seed's "
        f"ceiling. Where the ceiling is less than {100 * MIN_PGR_GAP:.0f} points above the teacher the ratio is "
        "noise and is shown as n/a with the gap.",
        "",
        *table_pgr(results),
        "## The paper's claims on this world",
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
    colours = plt.get_cmap("tab20").colors
    for index, group in enumerate(results.members["main"]):
        x, y = results.stat(group, "clean", "zero-shot"), results.stat(group, "pgd", "zero-shot")
        run = results.runs.get(group)
        marker = "s" if run is None else "o" if run["w2s"] else "^"
        axis.errorbar(100 * x.mean, 100 * y.mean, xerr=100 * x.std, yerr=100 * y.std, fmt=marker, capsize=2,
                      color=colours[index % len(colours)], markersize=7, label=results.label(group))
    axis.set_xlabel("zero-shot clean accuracy (%)")
    axis.set_ylabel(f"zero-shot PGD-20 accuracy at {round(255 * results.world['epsilon'])}/255 (%)")
    axis.set_title("■ world models   ● weak-to-strong   ▲ other defences (error bars: std over seeds)", fontsize=8)
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


if __name__ == "__main__":  # python -m study.report results.json: rebuild the report next to it
    import sys

    source = Path(sys.argv[1])
    print(write_report(json.loads(source.read_text()), source.parent))
