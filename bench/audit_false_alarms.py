"""False alarms of the soundness audits: how often a sound evaluation fails each audit.

    OMP_NUM_THREADS=1 python bench/audit_false_alarms.py [STUDY_DIR]    # default runs/demo
    OMP_NUM_THREADS=1 python bench/audit_false_alarms.py --monte-carlo [--home DIR] [--repeats 3]

With a study folder (the output of ``robust-w2s demo``, whose results.json holds every evaluation
record with its audits): every evaluation there runs the project's own attacks on models without
masked gradients, so every audit failure is a false alarm. Prints, per audit, the checks (an audit
is computed once per scope: ``in_threat_model`` per result, ``nested`` per (job, model, task, eps),
the others per (job, model, task) evaluation, repeated in each of its results), the failures and
their rate, the checks whose detail reports sound attacks or radii disagreeing per sample (what
the audits before issue 15 could fail), and how many results failed any audit.

Without results.json in the folder (or with ``--monte-carlo``): the same count over a Monte-Carlo
of the embedded world: its three models on every task, PGD-20 and APGD at 1, 2 and 4/255, each
evaluation repeated with ``--repeats`` evaluation seeds (other image subsets, random starts and
restarts). The evaluations write a text-head cache into the home: give a writable copy.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

from robust_w2s.eval.records import EvalRecord

SCOPE = {"in_threat_model": ("attack", "eps"), "nested": ("eps",)}  # others: one check per evaluation
WORLD_MODELS = ("embedded:weak", "embedded:weak-robust", "embedded:strong")


def study_records(folder: Path) -> list[tuple[str, EvalRecord]]:
    """(job, record) of every evaluation in ``folder/results.json``; job = "kind model" of the study."""
    entries = json.loads((folder / "results.json").read_text())["records"]
    return [(f"{entry['kind']} {entry['model']}", EvalRecord.from_dict(entry["result"])) for entry in entries]


def monte_carlo_records(home: str | None, repeats: int, n_samples: int, audit_samples: int,
                        eps: tuple[float, ...]) -> list[tuple[str, EvalRecord]]:
    """(job, record) of every world model on every embedded task, PGD and APGD, per evaluation seed."""
    from robust_w2s.eval.benchmarks import EMBEDDED_PGD_STEPS, resolve
    from robust_w2s.eval.runner import EvalSettings
    from robust_w2s.eval.suite import run_eval

    benchmarks = resolve("embedded", None, home)
    records = []
    for seed in range(repeats):
        settings = EvalSettings(attacks=("pgd", "apgd"), eps=eps, pgd_steps=EMBEDDED_PGD_STEPS, n_samples=n_samples,
                                seed=seed, audit_samples=audit_samples)
        for spec in WORLD_MODELS:
            with tempfile.TemporaryDirectory() as output:
                records += [(f"seed{seed} {spec}", record)
                            for record in run_eval(spec, benchmarks, settings, output, home=home, protocol="embedded")]
    return records


def tally(records: list[tuple[str, EvalRecord]]) -> dict[str, tuple[int, int, int]]:
    """audit name -> (checks, failures, checks whose detail reports per-sample disagreements as
    information: those the audits before issue 15 could fail), each check counted once over the
    results that repeat it."""
    checks: dict[str, dict[tuple, tuple[bool, bool]]] = defaultdict(dict)
    for job, record in records:
        for name, audit in record.audits.items():
            key = (job, record.model, record.dataset, *(getattr(record, field) for field in SCOPE.get(name, ())))
            passed, informative = checks[name].get(key, (True, False))
            checks[name][key] = (passed and audit["passed"], informative or "information:" in audit["detail"])
    return {name: (len(outcomes), sum(not passed for passed, _ in outcomes.values()),
                   sum(informative for _, informative in outcomes.values()))
            for name, outcomes in sorted(checks.items())}


def report(records: list[tuple[str, EvalRecord]], source: str) -> str:
    lines = [f"{len(records)} evaluation results ({source})", "",
             "| audit | checks | failures | false-alarm rate | disagreements reported |", "|---|---|---|---|---|"]
    for name, (count, failures, informative) in tally(records).items():
        lines.append(f"| {name} | {count} | {failures} | {failures / count:.2%} | {informative} |")
    failed = [(job, record) for job, record in records if not record.audits_passed]
    lines += ["", f"results failing any audit: {len(failed)} of {len(records)} ({len(failed) / len(records):.2%})"]
    lines += [f"- {job} / {record.dataset} / {record.attack} @ {record.eps_label}: {'; '.join(record.failed_audits)}"
              for job, record in failed]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", nargs="?", default="runs/demo", help="a `robust-w2s demo` output folder")
    parser.add_argument("--monte-carlo", action="store_true", help="evaluate the embedded world instead")
    parser.add_argument("--home", help="robust-w2s home with the embedded world (writable: a text-head cache)")
    parser.add_argument("--repeats", type=int, default=3, help="evaluation seeds of the Monte-Carlo")
    parser.add_argument("--n-samples", type=int, default=100, help="images per task in the Monte-Carlo")
    parser.add_argument("--audit-samples", type=int, default=16, help="images per task for the gradient and "
                        "large-eps audits (the study's 16)")
    parser.add_argument("--eps", default="1/255,2/255,4/255", help="radii of the Monte-Carlo")
    args = parser.parse_args()
    folder = Path(args.study)
    if not args.monte_carlo and (folder / "results.json").is_file():
        print(report(study_records(folder), f"{folder / 'results.json'}"))
        return
    from robust_w2s.attacks import parse_eps

    eps = tuple(parse_eps(value) for value in args.eps.split(","))
    if not args.monte_carlo:
        print(f"no {folder / 'results.json'}: a Monte-Carlo over the embedded world instead")
    records = monte_carlo_records(args.home, args.repeats, args.n_samples, args.audit_samples, eps)
    print(report(records, f"Monte-Carlo: {len(WORLD_MODELS)} world models x every task x PGD, APGD at {args.eps}, "
                          f"{args.repeats} evaluation seeds, {args.n_samples} images"))


if __name__ == "__main__":
    main()
