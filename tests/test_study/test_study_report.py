"""The study's report: tables, PGR and the claims computed from results.json, and nothing else."""
import json
from pathlib import Path

import pytest

from robust_w2s.eval.records import EvalRecord
from robust_w2s.layout import WORLD_MODELS
from robust_w2s.study.claims import claims
from robust_w2s.study.plan import CURVE_MODELS, RUNS, TABLE_B, WORLD_LABELS
from robust_w2s.study.report import build_markdown, write_report
from robust_w2s.study.results import Results, pgr

REPO = Path(__file__).resolve().parents[2]
TASKS = ["shape", "colour", "size-shape"]
EPS = 4 / 255


TEACHERS = ["embedded:weak", "embedded:weak-robust", "embedded:weak-outline", "embedded:weak-poor"]


def fake_results(accuracy: dict, seeds=(0, 1), weights: dict | None = None, split_accuracy: dict | None = None) -> dict:
    """results.json with every study model; ``accuracy[group]`` = (clean, robust) per seed (lists)
    or one pair for all seeds, the same on every task (robust: PGD-20; the worst case is 1 point
    lower). Unlisted groups get (0.5, 0.1). ``weights``: RAVEN runs' learned weights by teacher spec
    (default uniform); ``split_accuracy``: world model -> clean accuracy on every alignment split."""
    def pair(group, seed_index):
        value = accuracy.get(group, (0.5, 0.1))
        return value[seed_index] if isinstance(value, list) else value

    records = []
    models = [(name, name, None, 0) for name in WORLD_MODELS]
    models += [(f"{run.name}/seed{s}", run.name, s, i) for run in RUNS for i, s in enumerate(seeds)]
    for model, group, seed, index in models:
        clean, robust = pair(group, index)
        kinds = [("main", ("pgd", "apgd-ce"), (EPS,))]
        if group in TABLE_B and index == 0:
            kinds.append(("autoattack", ("pgd", "autoattack"), (EPS,)))
        if group in CURVE_MODELS:
            kinds.append(("curve", ("pgd",), (1 / 255, EPS)))
        for kind, attacks, eps_values in kinds:
            for task in TASKS:
                for eps in eps_values:
                    for attack in attacks:
                        robust_acc = robust - (0.0 if attack == "pgd" else 0.01)
                        result = EvalRecord(
                            model=model, dataset=task, attack=attack, eps=eps, eps_label=f"{round(eps * 255)}/255",
                            n_samples=10, seed=0, clean_acc=clean, robust_acc=robust_acc,
                            worst_case_acc=robust - 0.01, audits={}, audits_passed=True, seconds=1.0,
                            dataset_seconds=1.0, protocol="embedded", settings={}, benchmark={}, device="cpu",
                            versions={})
                        records.append({"model": model, "group": group, "seed": seed, "kind": kind,
                                        "result": result.to_dict()})
    settings = {"seeds": list(seeds), "overrides": [], "n_eval": 10, "n_autoattack": 10, "autoattack_seeds": 1,
                "autoattack_all_tasks": True, "n_curve": 10, "curve_eps": ["1/255", "4/255"], "audit_samples": 5,
                "eval_seed": 0, "quick": False}
    return {"study": {"settings": settings, "runs": [run.__dict__ | {} for run in RUNS], "command": "robust-w2s demo",
                      "wall_seconds": 60.0, "job_seconds": 100.0, "workers": 2, "cpu_count": 2},
            "world": {"epsilon": EPS, "teacher_train_epsilon": 3 / 255, "alignment_task": "shape", "tasks": TASKS,
                      "seed": 0, "fingerprint": "f",
                      "measured": {name: {split: {"clean_acc": value} for split in ("alignment", "alignment-shifted")}
                                   for name, value in (split_accuracy or {}).items()}},
            "training": {f"{run.name}/seed{s}": _training(run, weights) for run in RUNS for s in seeds},
            "records": records}


def _training(run, weights):
    from robust_w2s.align import load_config
    config = load_config(run.config_path)
    teachers = config.teachers
    mixed = config.method.guidance == "raven"
    return {"steps": 100, "config": {"train": {"batch_size": 64}, "teachers": teachers},
            "teacher_weights": (weights or {t: 1 / len(teachers) for t in teachers}) if mixed else None,
            "pik": {"n_labels": 512, "n_holdout": 102, "precision": 0.8, "recall": 0.6, "knows_rate": 0.7}
            if config.method.reweighting == "pik" else None}


def _claim(results: dict, key: str):
    return next(c for c in claims(Results(results)) if c.key == key)


def test_every_world_model_has_its_own_label_in_tables():
    results = Results(fake_results({}))
    labels = [results.label(name) for name in WORLD_MODELS]  # a model without a label raises here
    assert labels == [WORLD_LABELS[name] for name in WORLD_MODELS] and len(set(labels)) == len(labels)


def test_committed_report_is_rebuilt_from_committed_json():
    """docs/results.md is exactly what the builder makes of docs/results.json."""
    raw = json.loads((REPO / "docs" / "results.json").read_text())
    assert build_markdown(raw) == (REPO / "docs" / "results.md").read_text()


def test_mean_and_std_over_seeds_in_tables():
    text = build_markdown(fake_results({"adv-w2s": [(0.6, 0.2), (0.8, 0.4)]}))
    row = next(line for line in text.splitlines() if line.startswith("| Adv-W2S (EUR + IAR) | 70.0"))
    assert "70.0 ± 14.1 | 29.0 ± 14.1" in row  # ID clean, ID robust (the worst case): mean ± sample std


def test_pgr_uses_each_seeds_ceiling_and_refuses_a_tiny_gap():
    results = Results(fake_results({"weak-robust": (0.4, 0.3), "tecoa": [(0.8, 0.5), (0.6, 0.7)],
                                    "adv-w2s": [(0.6, 0.4), (0.5, 0.5)]}))
    clean, _ = pgr(results, "adv-w2s", "clean", "zero-shot")
    assert clean.values == pytest.approx(((0.6 - 0.4) / (0.8 - 0.4), (0.5 - 0.4) / (0.6 - 0.4)))
    robust, _ = pgr(results, "adv-w2s", "pgd", "zero-shot")
    assert robust.values == pytest.approx((0.5, 0.5))
    # ceiling only 1 point above the teacher on one seed: no ratio, the gap is reported instead
    tiny = Results(fake_results({"weak-robust": (0.4, 0.3), "tecoa": [(0.8, 0.31), (0.8, 0.5)]}))
    value, gap = pgr(tiny, "adv-w2s", "pgd", "ID")
    assert value is None and gap == pytest.approx((0.01 + 0.2) / 2)


def test_pgr_of_a_natural_teacher_run_is_against_the_natural_teacher():
    results = Results(fake_results({"weak": (0.2, 0.0), "weak-robust": (0.4, 0.3), "tecoa": (0.6, 0.4),
                                    "adv-w2s-base-natural": (0.4, 0.2)}))
    value, _ = pgr(results, "adv-w2s-base-natural", "clean", "ID")
    assert value.mean == pytest.approx((0.4 - 0.2) / (0.6 - 0.2))


def test_pgr_of_a_shifted_run_is_against_tecoa_on_the_same_split():
    results = Results(fake_results({"weak-robust": (0.4, 0.3), "tecoa": (0.8, 0.5), "tecoa-shifted": (0.6, 0.5),
                                    "adv-w2s-shifted": (0.5, 0.4)}))
    value, _ = pgr(results, "adv-w2s-shifted", "clean", "ID")
    assert value.mean == pytest.approx((0.5 - 0.4) / (0.6 - 0.4))  # not (0.8 - 0.4): TeCoA on the other split


@pytest.mark.parametrize("vanilla, verdict", [(0.15, "holds"), (0.18, "does not hold"), (0.05, "holds")])
def test_claim_a_is_the_share_of_the_teachers_advantage(vanilla, verdict):
    # strong 0.10, teacher 0.28: the student gains (vanilla - 0.10) / 0.18 of the teacher's advantage
    results = fake_results({"strong": (0.9, 0.10), "weak-robust": (0.6, 0.28), "vanilla-w2s": (0.8, vanilla)})
    assert _claim(results, "a").verdict == verdict


def test_claim_a_without_a_robustness_advantage_cannot_be_tested():
    results = fake_results({"strong": (0.9, 0.10), "weak-robust": (0.6, 0.11)})
    assert _claim(results, "a").verdict == "cannot be tested"


def test_claim_b_needs_robustness_beyond_noise_and_the_teacher():
    base = {"strong": (0.9, 0.10), "weak": (0.7, 0.15)}
    assert _claim(fake_results(base | {"adv-w2s-base-natural": [(0.7, 0.20), (0.7, 0.22)]}), "b").verdict == "holds"
    assert _claim(fake_results(base | {"adv-w2s-base-natural": [(0.7, 0.12), (0.7, 0.14)]}), "b").verdict == "partly"
    noisy = base | {"adv-w2s-base-natural": [(0.7, 0.05), (0.7, 0.35)]}  # mean 0.20, but std 0.21
    assert _claim(fake_results(noisy), "b").verdict == "does not hold"


def test_claim_c_each_component_against_the_base():
    base = {"adv-w2s-base": (0.70, 0.20)}
    both_better = base | {"adv-w2s-eur": (0.72, 0.22), "adv-w2s-iar": (0.75, 0.21)}
    assert _claim(fake_results(both_better), "c").verdict == "holds"
    # each metric against its own seed noise: a noisy clean gain does not hide a steady robust one
    steady = {"adv-w2s-base": [(0.70, 0.20), (0.70, 0.20)], "adv-w2s-eur": [(0.70, 0.23), (0.80, 0.23)],
              "adv-w2s-iar": [(0.75, 0.21), (0.75, 0.21)]}
    assert _claim(fake_results(steady), "c").verdict == "holds"
    iar_trades = base | {"adv-w2s-eur": (0.72, 0.22), "adv-w2s-iar": (0.75, 0.18)}
    claim = _claim(fake_results(iar_trades), "c")
    assert claim.verdict == "partly" and "+IAR: clean +5.0 (noise ±0.0), robust -2.0" in claim.evidence


@pytest.mark.parametrize("student, verdict", [((0.7, 0.35), "holds"), ((0.5, 0.35), "partly"),
                                              ((0.5, 0.25), "does not hold")])
def test_claim_d_needs_both_clean_and_robust_above_the_teacher(student, verdict):
    results = fake_results({"weak-robust": (0.6, 0.30), "adv-w2s": student})
    assert _claim(results, "d").verdict == verdict


def test_failed_audits_are_listed(tmp_path):
    results = fake_results({})
    failed = {"name": "nested", "passed": False, "detail": "autoattack-robust not pgd-robust"}
    results["records"][0]["result"] |= {"audits_passed": False, "audits": {"nested": failed}}
    text = build_markdown(results)
    assert "failed an audit" in text and "nested: autoattack-robust not pgd-robust" in text
    path = write_report(results, tmp_path)
    assert path.read_text() == text and json.loads((tmp_path / "results.json").read_text()) == results
    assert (tmp_path / "results-robust-vs-eps.png").stat().st_size > 0


def test_seed_claims_e_and_f_compare_raven_with_naive_averaging_and_the_best_teacher():
    base = {"weak": (0.6, 0.0), "weak-outline": (0.7, 0.0), "weak-poor": (0.3, 0.0), "weak-robust": (0.5, 0.2)}
    below = fake_results(base | {"average-shifted": (0.6, 0.1), "raven-shifted": (0.75, 0.1),
                                 "average": (0.8, 0.1), "raven": (0.8, 0.1)})
    claim = _claim(below, "e")  # the best teacher on zero-shot clean is the outline one, 0.7
    assert claim.verdict == "holds" and "-10.0 points" in claim.evidence
    assert _claim(below, "f").verdict == "holds"
    worse_in_distribution = fake_results(base | {"average-shifted": (0.6, 0.1), "raven-shifted": (0.75, 0.1),
                                                 "average": (0.8, 0.1), "raven": (0.7, 0.1)})
    assert _claim(worse_in_distribution, "f").verdict == "does not hold"
    above = fake_results(base | {"average-shifted": (0.72, 0.1)})
    assert _claim(above, "e").verdict == "does not hold"


def test_seed_claim_g_reads_the_learned_weights_against_the_teachers_accuracy():
    accuracy = {"weak": 0.6, "weak-robust": 0.5, "weak-outline": 0.8, "weak-poor": 0.2}
    favours = dict(zip(TEACHERS, (0.25, 0.2, 0.5, 0.05)))
    claim = _claim(fake_results({}, weights=favours, split_accuracy=accuracy), "g")
    assert claim.verdict == "holds" and "rank correlation +1.00" in claim.evidence
    inverted = dict(zip(TEACHERS, (0.2, 0.25, 0.05, 0.5)))
    assert _claim(fake_results({}, weights=inverted, split_accuracy=accuracy), "g").verdict == "does not hold"
    assert _claim(fake_results({}, weights=favours), "g").verdict == "cannot be tested"  # no accuracies recorded
    # A tie for the most accurate teacher: the verdict does not depend on which of the two is listed first.
    tied = accuracy | {"weak-robust": 0.8}
    for first in (0.5, 0.2):
        weights = dict(zip(TEACHERS, (0.25, first, 0.7 - first, 0.05)))
        assert _claim(fake_results({}, weights=weights, split_accuracy=tied), "g").verdict == "holds"
    # The most accurate teacher on top but a weak rank correlation (+0.40): partly, not holds.
    weak_rank = dict(zip(TEACHERS, (0.05, 0.35, 0.5, 0.1)))
    claim = _claim(fake_results({}, weights=weak_rank, split_accuracy=accuracy), "g")
    assert claim.verdict == "partly" and "rank correlation +0.40" in claim.evidence


def test_seed_claims_h_and_i():
    results = fake_results({"selective": (0.8, 0.1), "vanilla-w2s": (0.7, 0.1)})
    claim = _claim(results, "h")
    assert claim.verdict == "holds" and "precision 80.0 ± 0.0%" in claim.evidence
    assert _claim(fake_results({"selective": (0.6, 0.1), "vanilla-w2s": (0.7, 0.1)}), "h").verdict == "does not hold"
    assert "no better than calling every image known" not in claim.evidence  # precision 0.8 > known rate 0.7


def test_claim_h_says_when_pik_calls_every_image_known_and_one_seed_has_no_noise_estimate():
    raw = fake_results({"selective": (0.8, 0.1), "vanilla-w2s": (0.7, 0.1)}, seeds=(0,))
    for training in raw["training"].values():
        if training["pik"]:
            training["pik"].update(precision=0.95, recall=1.0, knows_rate=0.95)
    claim = _claim(raw, "h")
    assert "no better than calling every image known" in claim.evidence
    assert "one seed: no noise estimate" in claim.evidence and "±0.0" not in claim.evidence
    mix = {"adv-w2s-base-natural": (0.8, 0.1), "adv-w2s-base": (0.6, 0.3)}
    assert _claim(fake_results(mix | {"adv-raven-natural-robust": (0.8, 0.3)}), "i").verdict == "holds"
    assert _claim(fake_results(mix | {"adv-raven-natural-robust": (0.8, 0.2)}), "i").verdict == "partly"
    assert _claim(fake_results(mix | {"adv-raven-natural-robust": (0.7, 0.2)}), "i").verdict == "does not hold"
    # no trade-off to combine: the natural teacher's student is already as robust as the robust one's
    no_trade_off = {"adv-w2s-base-natural": (0.8, 0.3), "adv-w2s-base": (0.6, 0.3), "adv-raven-natural-robust": (0.8, 0.3)}
    claim = _claim(fake_results(no_trade_off), "i")
    assert claim.verdict == "cannot be tested" and "nothing for a mix to combine" in claim.evidence


def test_table_d_and_the_pgd_overstatement_are_in_the_report():
    text = build_markdown(fake_results({"raven-shifted": (0.75, 0.25)}))
    row = next(line for line in text.splitlines() if line.startswith("| `alignment-shifted` | RAVEN | clean"))
    assert "| 75.0 ± 0.0 | 24.0 ± 0.0 | 75.0 ± 0.0 | 24.0 ± 0.0 |" in row  # robust: the worst case, 1 point below PGD-20
    overstated = next(line for line in text.splitlines()
                      if line.startswith("| RAVEN on `alignment-shifted` | 25.0 ± 0.0 | 24.0 ± 0.0 |"))
    assert overstated.endswith("| 1.0 |")
