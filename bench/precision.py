"""bf16 against fp32 training attacks on the embedded world: the figures of docs/precision.md.

    OMP_NUM_THREADS=1 python bench/precision.py [--home DIR] [--work runs/precision] [--seeds 3]

Prints three markdown tables (CPU autocast runs bf16 like a GPU's, with its own list of bf16 ops):

1. Logits. KL(p_fp32 || p_bf16) per image between the softmax of fp32 logits and of logits whose
   image tower ran under bf16 autocast, the scaled cosine in bf16 (before issue 12) or in fp32 (as
   ``ZeroShotClassifier`` now computes it), for the world's teacher and student on alignment images.
2. Objective. On the same alignment batches and random starts, the objective each training attack
   reaches with bf16 forwards against fp32 forwards, both scored in fp32: Adv-W2S's student PGD (CE
   against the cached teacher), TeCoA's (CE against labels), FARE's feature attack and IAR's descent.
   gap = objective(bf16) / objective(fp32) - 1 (for the ascents, negative: bf16 weaker); "gain" is
   the same ratio of what the attack adds to the objective at the clean images.
3. Training. Adv-W2S and TeCoA trained as the reference study trains them (configs/embedded, its
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
METHODS = ("adv-w2s", "tecoa")


def _classifier(spec: str, world: dict, home) -> ZeroShotClassifier:
    task = world["alignment_task"]
    model, _, tokenizer = load_model(spec, home=home)
    return ZeroShotClassifier(model, tokenizer, world["classnames"][task], world["templates"][task]).eval()


def _alignment_batches(world: dict, home, transform, n_images: int, batch_size: int):
    dataset = load_image_dataset(f"{EMBEDDED}{ALIGNMENT_SPLIT}", home=home)
    return list(iterate_batches(dataset.select(range(n_images)), transform, batch_size))


@torch.no_grad()
def logits_table(classifiers: dict, batches) -> str:
    """Table 1: KL between softmaxes of fp32 and bf16-autocast logits, scaled cosine in bf16 or fp32."""
    rows = ["| model | logits | mean KL (nats) | max KL | argmax agrees | max abs logit difference |",
            "|---|---|---|---|---|---|"]
    for name, classifier in classifiers.items():
        fp32, bf16_head, fp32_head = [], [], []
        for pixels, _ in batches:
            fp32.append(classifier(pixels))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                features = classifier.image_features(pixels)
                # The head as it was before issue 12: its matmul under autocast, logits rounded to bf16.
                bf16_head.append((classifier.model.logit_scale.exp() * features
                                  @ classifier.text_head.to(features.dtype)).float())
                fp32_head.append(classifier(pixels))
        reference = torch.cat(fp32)
        for label, logits in (("bf16 tower, bf16 cosine", torch.cat(bf16_head)),
                              ("bf16 tower, fp32 cosine", torch.cat(fp32_head))):
            kl = (reference.softmax(-1) * (reference.log_softmax(-1) - logits.log_softmax(-1))).sum(-1)
            agree = (reference.argmax(-1) == logits.argmax(-1)).float().mean()
            rows.append(f"| {name} | {label} | {kl.mean():.2e} | {kl.max():.2e} | {100 * agree:.1f}% | "
                        f"{(reference - logits).abs().max():.3f} |")
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
    generator)): each training attack of the alignment methods, as the loop runs it."""
    features = _Features(student)

    def student_pgd(module, objective, steps, alpha=None):
        return lambda x, target, precision, generator: pgd(
            module, x, target, eps=eps, steps=steps, alpha=alpha, objective=objective, start_noise_std=0.001,
            generator=generator, precision=precision)

    def iar(x, target, precision, generator):
        return inverse_adversarial(teacher, x, eps=eps, steps=2, prediction=target, start_noise_std=0.001,
                                   generator=generator, precision=precision)

    def soft(x, _):
        return teacher_probs(teacher, x)  # the cached target p_T(x)
    return {
        "Adv-W2S student PGD, m=3 (embedded config)": (soft, student, "ce", student_pgd(student, "ce", 3)),
        "Adv-W2S student PGD, m=10, step eps/2 (paper's ratio)":
            (soft, student, "ce", student_pgd(student, "ce", 10, eps / 2)),
        "TeCoA PGD, m=3": (lambda x, labels: labels, student, "ce", student_pgd(student, "ce", 3)),
        "FARE feature PGD, m=3": (lambda x, _: features(x), features, "l2", student_pgd(features, "l2", 3)),
        "IAR teacher refinement, n=2 (descent)": (lambda x, _: teacher(x).argmax(-1), teacher, "ce", iar),
    }


def objective_table(students: dict, teacher, batches, eps: float) -> str:
    """Table 2: the objective each training attack reaches in bf16 against fp32, on the same batches."""
    rows = ["| student | attack | clean | fp32 | bf16 | gap | gain bf16 / gain fp32 |", "|---|---|---|---|---|---|---|"]
    for student_name, student in students.items():
        for name, (make_target, module, objective_name, attack) in _attacks(student, teacher, eps).items():
            objective = OBJECTIVES[objective_name]
            totals = {"clean": 0.0, "fp32": 0.0, "bf16": 0.0}
            for index, (pixels, labels) in enumerate(batches):
                with torch.no_grad():
                    target = make_target(pixels, labels)
                    totals["clean"] += objective(module(pixels), target).item()
                for precision in PRECISIONS:  # the same random start for both precisions
                    found = attack(pixels, target, precision, torch.Generator().manual_seed(index))
                    with torch.no_grad():  # scored in fp32
                        totals[precision] += objective(module(found), target).item()
            gap = totals["bf16"] / totals["fp32"] - 1
            gain = (totals["bf16"] - totals["clean"]) / (totals["fp32"] - totals["clean"])
            rows.append(f"| {student_name} | {name} | {totals['clean']:.2f} | {totals['fp32']:.2f} | "
                        f"{totals['bf16']:.2f} | {100 * gap:+.2f}% | {gain:.4f} |")
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
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"

    rows = [f"| method | tasks | attacks | clean % | robust % | training s |", "|---|---|---|---|---|---|"]
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
    batches = _alignment_batches(world, args.home, eval_transform(teacher.model, normalize=False), args.images,
                                 batch_size=64)
    print(f"## 1. Logits ({args.images} alignment images)\n")
    print(logits_table({"weak-robust (teacher)": teacher, **students}, batches))
    print(f"\n## 2. Objective reached, bf16 against fp32 ({args.images} alignment images, eps {255 * eps:g}/255)\n")
    print(objective_table(students, teacher, batches, eps))
    print(f"\n## 3. Training, {args.seeds} seeds (clean and PGD-20 accuracy, {FULL.n_eval} images per task)\n")
    print(training_table(jobs, args.seeds, world["alignment_task"]))


if __name__ == "__main__":
    main()
