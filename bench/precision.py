"""bf16 against fp32 training attacks on the embedded world: the figures of docs/precision.md.

    OMP_NUM_THREADS=1 python bench/precision.py [--home DIR] [--work runs/precision] [--seeds 3]

Prints three markdown tables (CPU autocast runs bf16 like a GPU's, with its own list of bf16 ops):

1. Logits. KL(p_fp32 || p_bf16) per image between the softmax of fp32 logits and of logits whose
   image tower ran under bf16 autocast, the scaled cosine in bf16 (before issue 12) or in fp32 (as
   ``ZeroShotClassifier`` now computes it), for the world's teacher and students on alignment images,
   at each model's own logit scale and at CLIP's 100.
2. Objective. On the same alignment batches and random starts, the objective each training attack
   reaches with bf16 forwards against fp32 forwards, both scored in fp32: Adv-W2S's student PGD (CE
   against the cached teacher), TeCoA's (CE against labels), FARE's feature attack and IAR's descent.
   gap = objective(bf16) / objective(fp32) - 1 (for the ascents, negative: bf16 weaker); "gain" is
   the same ratio of what the attack adds to the objective at the clean images; the last column is
   the gap of fp32 from other random starts: the attack's own noise.
3. Training. Adv-W2S, TeCoA and FARE trained as the reference study trains them (configs/embedded, its
   overrides, seeds 0..S-1) with ``attack.precision=fp32`` and ``=bf16``, evaluated as it evaluates
   (clean and PGD-20 at the world's epsilon, the same 100 seeded images per task): the study's own
   jobs, cached under ``--work`` (a repeated call redoes only what is missing). Each training is also
   ``robust-w2s align --config configs/embedded/METHOD.yaml --set attack.precision=P --set
   train.seed=S --set check.tasks=[] --set teacher=embedded:weak-robust``.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from robust_w2s.align.inputs import teacher_probs
from robust_w2s.attacks import OBJECTIVES, inverse_adversarial, pgd
from robust_w2s.data import iterate_batches, load_image_dataset
from robust_w2s.eval.records import load_records
from robust_w2s.layout import ALIGNMENT_SPLIT, EMBEDDED, model_spec, read_world
from robust_w2s.models import eval_transform, load_model
from robust_w2s.study.plan import FULL, RUNS, run_overrides
from robust_w2s.study.run import EvalJob, TrainJob, execute, fingerprint, job_seconds
from robust_w2s.zeroshot import ZeroShotClassifier

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp32", "bf16")
METHODS = ("adv-w2s", "tecoa", "fare")  # FARE: its feature attack is the most precision-sensitive


def _classifier(spec: str, world: dict, home) -> ZeroShotClassifier:
    task = world["alignment_task"]
    model, _, tokenizer = load_model(spec, home=home)
    return ZeroShotClassifier(model, tokenizer, world["classnames"][task], world["templates"][task]).eval()


def _alignment_batches(home, transform, n_images: int, batch_size: int):
    dataset = load_image_dataset(f"{EMBEDDED}{ALIGNMENT_SPLIT}", home=home)
    return list(iterate_batches(dataset.select(range(n_images)), transform, batch_size))


@torch.no_grad()
def logits_table(classifiers: dict, batches) -> str:
    """Table 1: KL between the softmaxes of fp32 logits and of logits whose image tower ran under bf16
    autocast, the scaled cosine s * cos(f, W) in bf16 or in fp32, at the model's own logit scale s and at
    CLIP's s = 100 (the world's models learned smaller scales; bf16 rounds a logit of 100 s in coarser steps)."""
    rows = ["| model | logit scale | scaled cosine | mean KL (nats) | max KL | argmax agrees | "
            "max abs logit difference |", "|---|---|---|---|---|---|---|"]
    for name, classifier in classifiers.items():
        head = classifier.text_head
        fp32 = torch.cat([classifier.image_features(pixels) for pixels, _ in batches])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = torch.cat([classifier.image_features(pixels) for pixels, _ in batches])
        for scale in (classifier.model.logit_scale.exp(), torch.tensor(100.0)):  # 0-d, as open_clip's
            reference = scale * fp32 @ head
            with torch.autocast("cpu", dtype=torch.bfloat16):  # the head before issue 12: its matmul in bf16
                bf16_cosine = (scale * bf16 @ head.to(bf16.dtype)).float()
            fp32_cosine = scale * bf16.float() @ head  # as ZeroShotClassifier computes it now
            for label, logits in (("bf16", bf16_cosine), ("fp32", fp32_cosine)):
                kl = (reference.softmax(-1) * (reference.log_softmax(-1) - logits.log_softmax(-1))).sum(-1)
                agree = (reference.argmax(-1) == logits.argmax(-1)).float().mean()
                rows.append(f"| {name} | {scale.item():.1f} | {label} | {kl.mean():.2e} | {kl.max():.2e} | "
                            f"{100 * agree:.1f}% | {(reference - logits).abs().max():.3f} |")
    return "\n".join(rows)


class _Features(torch.nn.Module):
    """The classifier as pixels -> raw image features: what FARE's training attack attacks."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, pixels):
        return self.classifier.image_features(pixels, normalize=False)


def _attacks(student, teacher, eps: float) -> dict:
    """name -> (target(pixels, labels), attacked module, objective name, attack(pixels, target, precision,
    generator)): the student's training attacks of the alignment methods, as the loop runs them."""
    features = _Features(student)

    def student_pgd(module, objective, steps, alpha=None):
        return lambda x, target, precision, generator: pgd(
            module, x, target, eps=eps, steps=steps, alpha=alpha, objective=objective, start_noise_std=0.001,
            generator=generator, precision=precision)

    def soft(x, _):
        return teacher_probs(teacher, x)  # the cached target p_T(x)
    return {
        "Adv-W2S student PGD, m=3 (embedded config)": (soft, student, "ce", student_pgd(student, "ce", 3)),
        "Adv-W2S student PGD, m=10, step eps/2 (paper's ratio)":
            (soft, student, "ce", student_pgd(student, "ce", 10, eps / 2)),
        "TeCoA PGD, m=3": (lambda x, labels: labels, student, "ce", student_pgd(student, "ce", 3)),
        "FARE feature PGD, m=3": (lambda x, _: features(x), features, "l2", student_pgd(features, "l2", 3)),
    }


def _refinement(teacher, eps: float) -> dict:
    """IAR's descent on the teacher towards its own prediction (n=2), in the same form as ``_attacks``."""
    def iar(x, target, precision, generator):
        return inverse_adversarial(teacher, x, eps=eps, steps=2, prediction=target, start_noise_std=0.001,
                                   generator=generator, precision=precision)

    def prediction(x, _):
        return teacher(x).argmax(-1)  # M(p_T(x)), as the cache gives it
    return {"IAR refinement, n=2 (descent: lower is stronger)": (prediction, teacher, "ce", iar)}


def objective_table(students: dict, teacher, batches, eps: float) -> str:
    """Table 2: the objective each training attack reaches in bf16 against fp32, on the same batches and
    random starts; "fp32, other starts" is fp32 again from other random starts: the attack's own noise."""
    rows = ["| attacked | attack | clean | fp32 | bf16 | gap | gain bf16 / gain fp32 | gap of fp32, other starts |",
            "|---|---|---|---|---|---|---|---|"]
    runs = [(name, attack) for name, student in students.items() for attack in _attacks(student, teacher, eps).items()]
    runs += [("weak-robust (teacher)", attack) for attack in _refinement(teacher, eps).items()]
    for attacked, (name, (make_target, module, objective_name, attack)) in runs:
        objective = OBJECTIVES[objective_name]
        totals = {"clean": 0.0, "fp32": 0.0, "bf16": 0.0, "other": 0.0}
        for index, (pixels, labels) in enumerate(batches):
            with torch.no_grad():
                target = make_target(pixels, labels)
                totals["clean"] += objective(module(pixels), target).item()
            for key, precision, seed in (("fp32", "fp32", index), ("bf16", "bf16", index),
                                         ("other", "fp32", index + len(batches))):
                found = attack(pixels, target, precision, torch.Generator().manual_seed(seed))
                with torch.no_grad():  # scored in fp32
                    totals[key] += objective(module(found), target).item()
        gap = totals["bf16"] / totals["fp32"] - 1
        gain = (totals["bf16"] - totals["clean"]) / (totals["fp32"] - totals["clean"])
        rows.append(f"| {attacked} | {name} | {totals['clean']:.2f} | {totals['fp32']:.2f} | {totals['bf16']:.2f} | "
                    f"{100 * gap:+.2f}% | {gain:.4f} | {100 * (totals['other'] / totals['fp32'] - 1):+.2f}% |")
    return "\n".join(rows)


def training_jobs(world: dict, work: Path, seeds: int) -> dict:
    """(method, precision, seed) -> (TrainJob, EvalJob): the study's jobs, with attack.precision set."""
    runs = {run.name: run for run in RUNS}
    jobs = {}
    for method in METHODS:
        for precision in PRECISIONS:
            for seed in range(seeds):
                model = f"{method}-{precision}/seed{seed}"
                overrides = (*run_overrides(runs[method], seed, FULL), f"attack.precision={precision}")
                train = TrainJob(key=f"train {model}", model=model, folder=str(work / "runs" / model),
                                 config=str(runs[method].config_path), overrides=overrides,
                                 upstream=world["fingerprint"])
                evaluation = EvalJob(key=f"main {model}", model=model, folder=str(work / "eval" / model),
                                     kind="main", spec=str(Path(train.folder) / "checkpoint"), attacks=("pgd",),
                                     eps=(float(world["epsilon"]),), n_samples=FULL.n_eval,
                                     eval_seed=FULL.eval_seed, audit_samples=FULL.audit_samples,
                                     upstream=fingerprint(train), needs=train.key)
                jobs[method, precision, seed] = (train, evaluation)
    return jobs


def _accuracies(folder: str, task: str | None = None) -> tuple[float, float]:
    """(clean, robust) accuracy in %, averaged over every task (or of ``task``)."""
    records = [r for r in load_records(folder) if task is None or r.dataset == task]
    return (100 * statistics.mean(r.clean_acc for r in records), 100 * statistics.mean(r.robust_acc for r in records))


def training_table(jobs: dict, seeds: int, alignment_task: str) -> str:
    """Table 3: mean +- std over seeds of clean and PGD-20 accuracy, bf16 - fp32 and its standard error."""
    def cell(values):
        spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.1f}{spread}"

    rows = ["| method | tasks | attacks | clean % | robust % | training s |", "|---|---|---|---|---|---|"]
    for method in METHODS:
        for task in (None, alignment_task):
            per = {p: [_accuracies(jobs[method, p, s][1].folder, task) for s in range(seeds)] for p in PRECISIONS}
            for precision in PRECISIONS:
                seconds = [job_seconds(jobs[method, precision, s][0]) for s in range(seeds)]
                rows.append(f"| {method} | {task or 'mean of all'} | {precision} | "
                            f"{cell([c for c, _ in per[precision]])} | {cell([r for _, r in per[precision]])} | "
                            f"{statistics.mean(seconds):.0f} |")
            differences = []
            for column in (0, 1):
                b, f = ([values[column] for values in per[p]] for p in ("bf16", "fp32"))
                error = (statistics.variance(b) / seeds + statistics.variance(f) / seeds) ** 0.5 if seeds > 1 else 0.0
                differences.append(f"{statistics.mean(b) - statistics.mean(f):+.1f} (s.e. {error:.1f})")
            rows.append(f"| {method} | {task or 'mean of all'} | bf16 - fp32 | {differences[0]} | {differences[1]} | |")
    return "\n".join(rows)


def paired_differences(jobs: dict, seeds: int) -> str:
    """The bf16 run against the fp32 run of the same seed (same batches, same attack starts), per task."""
    differences = []
    for method in METHODS:
        for seed in range(seeds):
            fp32, bf16 = ({r.dataset: r for r in load_records(jobs[method, p, seed][1].folder)} for p in PRECISIONS)
            differences += [(round(100 * abs(bf16[t].clean_acc - fp32[t].clean_acc)),
                             round(100 * abs(bf16[t].robust_acc - fp32[t].robust_acc))) for t in fp32]
    return (f"bf16 against fp32 run of the same seed, per task: at most {max(c for c, _ in differences)} (clean) "
            f"and {max(r for _, r in differences)} (robust) of {FULL.n_eval} images differ; "
            f"{sum(d == (0, 0) for d in differences)} of {len(differences)} results identical")


def study_agreement(jobs: dict, seeds: int, results: Path) -> str:
    """How many per-task (clean, robust) results of the fp32 runs equal those of the committed study
    (``docs/results.json``, the same jobs before ``attack.precision`` existed)."""
    study = {(r["model"], r["result"]["dataset"]): (r["result"]["clean_acc"], r["result"]["robust_acc"])
             for r in json.loads(results.read_text())["records"] if r["kind"] == "main"}
    mine = {(f"{method}/seed{seed}", r.dataset): (r.clean_acc, r.robust_acc)
            for method in METHODS for seed in range(seeds) for r in load_records(jobs[method, "fp32", seed][1].folder)}
    same = sum(study.get(key) == value for key, value in mine.items())
    return f"fp32 runs against {results.relative_to(ROOT)}: {same} of {len(mine)} per-task results identical"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", help="robust-w2s home with the embedded world")
    parser.add_argument("--work", default="runs/precision", help="folder of the cached training and eval jobs")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per (method, precision)")
    parser.add_argument("--images", type=int, default=1024, help="alignment images for tables 1 and 2")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = read_world(args.home)
    eps = float(world["epsilon"])

    jobs = training_jobs(world, Path(args.work), args.seeds)
    failed = execute([job for pair in jobs.values() for job in pair], args.home, workers=1)
    if failed:
        raise SystemExit(f"failed jobs: {json.dumps(failed, indent=2)}")

    teacher = _classifier(model_spec("weak-robust"), world, args.home)
    students = {"strong (the start of training)": _classifier(model_spec("strong"), world, args.home),
                "Adv-W2S fp32, seed 0 (its end)": _classifier(
                    str(Path(jobs["adv-w2s", "fp32", 0][0].folder) / "checkpoint"), world, args.home)}
    batches = _alignment_batches(args.home, eval_transform(teacher.model, normalize=False), args.images,
                                 batch_size=64)
    print(f"## 1. Logits ({args.images} alignment images)\n")
    print(logits_table({"weak-robust (teacher)": teacher, **students}, batches))
    print(f"\n## 2. Objective reached, bf16 against fp32 ({args.images} alignment images, eps {255 * eps:g}/255)\n")
    print(objective_table(students, teacher, batches, eps))
    print(f"\n## 3. Training, {args.seeds} seeds (clean and PGD-20 accuracy, {FULL.n_eval} images per task)\n")
    print(training_table(jobs, args.seeds, world["alignment_task"]))
    print(f"\n{paired_differences(jobs, args.seeds)}")
    if world["fingerprint"] == json.loads((ROOT / "docs" / "results.json").read_text())["world"]["fingerprint"]:
        print(f"\n{study_agreement(jobs, args.seeds, ROOT / 'docs' / 'results.json')}")


if __name__ == "__main__":
    main()
